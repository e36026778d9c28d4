"""The library's wings import one way (README, "Layout"): read from the source with ast."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PIPELINE = Path(__file__).resolve().parents[1] / "pipeline"
SHARED = {"schema", "splits", "store"}  # top-level modules every wing may import
WINGS = {
    "io": set(),
    "geometry": set(),
    "qa": {"geometry"},
    "sources": {"io", "geometry"},
    "checks": {"io", "geometry", "qa"},
    "release": {"io", "geometry", "sources", "checks"},
    "shards": {"checks", "release"},
    "llm": {"geometry", "qa", "shards"},
    "build": {"io", "geometry", "qa", "sources", "checks", "release", "shards", "llm"},
}


def _imported(path: Path) -> set[str]:
    """The pipeline modules a file imports, as dotted names under pipeline (`build.stages`)."""
    package = path.relative_to(PIPELINE.parent).with_suffix("").parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from pipeline import schema` names modules; `from pipeline.qa import x` its wing
            names = [f"{module}.{a.name}" for a in node.names] if module == "pipeline" else [module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n.removeprefix("pipeline.") for n in names if n.startswith("pipeline.")}
        found |= {n for n in names if n.split(".")[0] == "baselines"}
    return found


def _wing_of(module: str) -> str | None:
    head = module.split(".")[0]
    return head if head in WINGS else None


def violations() -> list[str]:
    """Every import of a wing, or of the baseline, that the layout does not allow."""
    found = []
    for path in sorted(PIPELINE.rglob("*.py")):
        name = path.relative_to(PIPELINE).with_suffix("").as_posix().replace("/", ".")
        here = _wing_of(name)
        for module in sorted(_imported(path)):
            if module.split(".")[0] == "baselines":
                found.append(f"{name} imports {module}: the pipeline never imports the baseline")
                continue
            wing = _wing_of(module)
            if here is None and name.split(".")[0] in SHARED and wing is not None:
                found.append(f"{name} (shared) imports the {wing} wing")
            elif here is not None and wing is not None and wing != here and wing not in WINGS[here]:
                found.append(f"{name} imports {module}: {here} may not import {wing}")
    return found


def test_wings_import_one_way() -> None:
    assert violations() == []


def test_the_check_finds_a_forbidden_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same reading flags a geometry module that imports build."""
    fake = tmp_path / "pipeline"
    (fake / "geometry").mkdir(parents=True)
    (fake / "geometry" / "bad.py").write_text("from ..build.stages import extract_batch\n")
    (fake / "schema.py").write_text("from .qa import templates\n")
    monkeypatch.setattr(sys.modules[__name__], "PIPELINE", fake)
    assert violations() == [
        "geometry.bad imports build.stages: geometry may not import build",
        "schema (shared) imports the qa wing",
    ]
