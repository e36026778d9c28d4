"""The output folder: --overwrite replaces only an MMRS build's own files, what a killed
build left is put right by the next one, and a build replaces another only once valid."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.build.output import hold
from pipeline.build.run import BuildConfig, BuildError, SourceRequest, build, run_build
from pipeline.checks.folder import validate
from pipeline.demo import write_kvasir
from pipeline.sources import REGISTRY, load_spec

PROJECT = Path(__file__).resolve().parents[2]
USER_FILES = {"notes.txt": b"my notes", "analysis/zones.csv": b"zone,n\n", "data/mine.txt": b"x"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_kvasir(tmp_path_factory.mktemp("output-data"), 6, size=(80, 64))


def _config(data: Path, out: Path, **kwargs) -> BuildConfig:
    return BuildConfig(
        (SourceRequest(REGISTRY["kvasir_seg"], data),), out, progress=False, **kwargs
    )


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under folder by its relative path, with its bytes."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _left_beside(out: Path) -> list[str]:
    """What a build of out keeps beside it (.<out>.*)."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def _with_user_files(out: Path) -> None:
    for name, content in USER_FILES.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(content)


def test_overwrite_replaces_only_an_mmrs_builds_own_files(data: Path, tmp_path: Path) -> None:
    """A folder whose manifest.json is not an MMRS build's (a web app's, or one listing a
    file outside the folder) is refused and left as it was; a real build is replaced file by
    file, and what the user added beside its files stays; a new file that would land on a
    user's is refused before anything moves."""
    foreign = tmp_path / "webapp"
    foreign.mkdir()
    (foreign / "manifest.json").write_text('{"name": "my app", "icons": []}')
    (foreign / "index.html").write_text("<html></html>")
    (tmp_path / "secret.txt").write_text("mine")
    climbing = tmp_path / "climbing"  # a real build whose manifest lists a file outside it
    build(_config(data, climbing))
    manifest = json.loads((climbing / "manifest.json").read_text())
    manifest["files"]["../secret.txt"] = manifest["files"]["README.md"]
    (climbing / "manifest.json").write_text(json.dumps(manifest))
    for folder in (foreign, climbing):
        before = _tree(folder)
        with pytest.raises(BuildError, match="is not an MMRS build's manifest .*(format|\\.\\./)"):
            build(_config(data, folder, overwrite=True))
        assert _tree(folder) == before and _left_beside(folder) == []
    assert (tmp_path / "secret.txt").read_text() == "mine"

    out = tmp_path / "out"
    build(_config(data, out))
    old = json.loads((out / "manifest.json").read_text())["files"]
    _with_user_files(out)
    build(_config(data, out, overwrite=True, seed=1, max_shard_bytes=1))  # a shard per image
    new = json.loads((out / "manifest.json").read_text())["files"]
    assert set(new) != set(old)  # other shard names: the earlier build's are gone
    tree = _tree(out)
    assert set(tree) == {*new, "manifest.json", *USER_FILES}
    assert {name: tree[name] for name in USER_FILES} == USER_FILES
    assert validate(out).violations == [
        f"{name}: not in the manifest" for name in sorted(USER_FILES)
    ]
    assert _left_beside(out) == []

    probe = tmp_path / "probe"  # the names a build with batches of one writes
    build(_config(data, probe, batch_size=1))
    mine = sorted(set(json.loads((probe / "manifest.json").read_text())["files"]) - set(new))[0]
    (out / mine).write_bytes(b"a file of mine")
    before = _tree(out)
    with pytest.raises(BuildError, match=f"refusing to replace .*{mine}: the build in"):
        build(_config(data, out, overwrite=True, batch_size=1))
    assert _tree(out) == before and _left_beside(out) == []


KILLED_BUILD = """
import os, sys
from pathlib import Path
from pipeline.build import output, run
from pipeline.build.run import BuildConfig, SourceRequest, build
from pipeline.sources import REGISTRY

data, out, kill_after = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
moved, move = 0, output._move

def move_then_die(path, destination):
    global moved
    if moved < kill_after:
        move(path, destination)
        moved += 1
    if moved == kill_after:
        os._exit(9)

output._move = move_then_die
if kill_after < 0:  # killed once assembled, before moving in
    run.move_in = lambda out, replaced: os._exit(9)
build(BuildConfig((SourceRequest(REGISTRY["kvasir_seg"], data),), out, seed=1,
                  overwrite=True, progress=False))
"""


def test_a_build_killed_anywhere_is_put_right_by_the_next_one(data: Path, tmp_path: Path) -> None:
    """A process killed before its build moves in (staging and scratch store left), after
    the earlier build's manifest left, halfway through the new files, or once the new
    manifest is in (the earlier build's files still beside): the next build
    into the folder finds the earlier build whole (or the new one, once whole), the user's
    files where they were, and nothing left beside the folder."""
    reference = tmp_path / "reference"
    build(_config(data, reference, seed=1))
    new = _tree(reference)
    out = tmp_path / "out"
    build(_config(data, out))
    _with_user_files(out)
    old = _tree(out)
    n_old = len(json.loads((out / "manifest.json").read_text())["files"]) + 1
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    for kill_after in (-1, 1, n_old + 2, n_old + len(new)):
        command = [sys.executable, "-c", KILLED_BUILD, str(data), str(out), str(kill_after)]
        assert subprocess.run(command, env=env, check=False).returncode == 9
        left = _left_beside(out)
        assert ".out.partial" in left and any(n.startswith(".out.store-") for n in left)
        assert (".out.previous" in left) == (kill_after > 0)
        with hold(out):
            assert _tree(out) == (old if kill_after < n_old + len(new) else {**new, **USER_FILES})
            assert _left_beside(out) == [".out.lock"]
        assert _left_beside(out) == []

    # What an earlier MMRS left when killed between its two renames: the folder gone, its
    # whole build (and the user's files) in .out.previous.
    out.rename(tmp_path / ".out.previous")
    with hold(out):
        assert _tree(out) == {**new, **USER_FILES}
    assert _left_beside(out) == []


def test_scratch_written_late_is_removed_as_the_lock_is_let_go(tmp_path: Path) -> None:
    """What a worker wrote into a scratch store after its build removed it (a job stopped
    by Ctrl-C, still unwinding) is gone once the build lets its lock go; a nested hold
    (the flow's inside the command's) leaves the outer build's scratch alone."""
    out = tmp_path / "out"
    with hold(out):
        late = tmp_path / ".out.store-late" / "parts" / ".key.123.tmp"
        late.mkdir(parents=True)
        (late / "part.arrow").write_bytes(b"rows")
        (tmp_path / ".out.ahead-late").mkdir()
        with hold(out):
            pass
        assert _left_beside(out) == [".out.ahead-late", ".out.lock", ".out.store-late"]
    assert _left_beside(out) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_build_that_fails_its_checks_keeps_the_earlier_one(tmp_path: Path) -> None:
    """A patient whose images the spec's official splits put in two splits fails the
    build's validation: the earlier (valid) build stays in place, untouched, and the new one
    waits in .<out>.partial until the next build, which replaces the earlier one once valid."""
    root = tmp_path / "data"
    pixels = np.zeros((40, 40), np.uint8)
    pixels[5:20, 5:20] = 255
    for split, name, shade in (("train", "p1_a", 60), ("train", "p2_a", 90)):
        image = np.full((40, 40), shade, np.uint8)
        Image.fromarray(image).save(_made(root / split / "images" / f"{name}.png"))
        Image.fromarray(pixels).save(_made(root / split / "masks" / f"{name}.png"))
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(
        "name: leaky\nmodality: ct\ntarget: lesion\n"
        'images: "*/images/*.png"\nmasks: "{parent}/../masks/{stem}.png"\n'
        'split_regex: "^(?P<split>train|test)/"\npatient_id_regex: "(?P<patient_id>p\\\\d+)_"\n'
    )
    out = tmp_path / "out"

    def run(**kwargs) -> object:
        config = BuildConfig((SourceRequest(load_spec(spec_path), root),), out, progress=False,
                             overwrite=True, **kwargs)  # fmt: skip
        return run_build(config, check=lambda folder, _: validate(folder))

    assert run().validation.ok
    earlier = _tree(out)
    image = root / "test" / "images" / "p1_b.png"
    Image.fromarray(np.full((40, 40), 200, np.uint8)).save(_made(image))
    Image.fromarray(pixels).save(_made(root / "test" / "masks" / "p1_b.png"))
    failed = run()
    assert not failed.validation.ok
    assert any("patient leakage: leaky/p1" in v for v in failed.validation.violations)
    assert _tree(out) == earlier
    assert (
        failed.folder == tmp_path / ".out.partial" and (failed.folder / "manifest.json").is_file()
    )
    image.unlink()
    assert run(seed=1).validation.ok
    assert _tree(out) != earlier and _left_beside(out) == []


def _made(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
