"""One build's LLM work, as run_build sees it: templates first, then the rows.

`open_rewriting` opens the build's session (client, limits, account); `Rewriting` plans the
stage jobs (expand.py's per family, paraphrase.py's per render result), runs them through the
runner it is given, and keeps what they gave for the summary and the manifest.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..qa.templates import default_templates_dir
from ..shards.parts import RenderResult
from ..store import StageRunner
from .expand import (
    GENERATED,
    ExpandJob,
    ExpandResult,
    check_generated,
    expand_family,
    merged_templates,
    read_families,
    write_generated,
)
from .paraphrase import (
    RewriteConfig,
    RewriteJob,
    RewriteResult,
    Session,
    load_prompt,
    open_session,
    rewrite_batch,
)


class Rewriting:
    """One build's LLM work: its session, the jobs it runs and what they gave."""

    def __init__(self, config: RewriteConfig, sess: Session) -> None:
        self.config = config
        self.session = sess
        self.statuses: Counter = Counter()
        self.generated: dict[str, int] = {}  # family -> templates in its generated file
        self.expansion: dict[str, Any] = {}  # family -> what this run asked and kept

    def templates(self, directory: Path | None, store: Path, run: StageRunner) -> Path | None:
        """The templates folder the build renders with (with generated variants if expanding).

        Families without <templates>/generated/<family>.yaml are asked for variants; those
        files are then checked (they may have been edited) and merged in.
        """
        if self.config.mode != "expand-templates":
            return directory
        directory = directory or default_templates_dir()
        generated = directory / GENERATED
        base = read_families(directory)
        version = load_prompt("expand").version
        jobs = [
            ExpandJob(
                family,
                tuple(tuple(sorted(entry.items())) for entry in entries),
                self.config,
                version,
                store,
                self.session.id,
            )
            for family, entries in base.items()
            if entries and not (generated / f"{family}.yaml").is_file()  # nothing to vary
        ]
        results: list[ExpandResult] = list(run(expand_family, jobs)) if jobs else []
        for result in results:
            self.expansion[result.family] = {
                "proposed": result.proposed,
                "kept": len(result.kept),
                "rejected": dict(sorted(result.rejected.items())),
                **({"error": result.error} if result.error else {}),
            }
            if result.error is None:
                write_generated(generated / f"{result.family}.yaml", result, self.config, version)
        for path in sorted(generated.glob("*.yaml")):
            self.generated[path.stem] = check_generated(path, base)
        return merged_templates(directory, store)

    def paraphrase(
        self, rendered: list[RenderResult], store: Path, run: StageRunner
    ) -> list[RenderResult]:
        """The render results with their parts rewritten (unchanged in other modes)."""
        if self.config.mode != "paraphrase":
            return rendered
        version = load_prompt("paraphrase").version
        jobs = [RewriteJob(r, self.config, version, store, self.session.id) for r in rendered]
        results: list[RewriteResult] = list(run(rewrite_batch, jobs))
        for result in results:
            self.statuses.update(result.statuses)
        return [
            replace(r, key=w.key, parts=w.parts) for r, w in zip(rendered, results, strict=True)
        ]

    def report(self) -> dict[str, Any]:
        """Settings and outcomes: the same for every build with the same inputs and cache."""
        report: dict[str, Any] = self.config.describe()
        if self.config.mode == "paraphrase":
            rejected: Counter = Counter()
            for status, count in self.statuses.items():
                if status.startswith("rejected:"):
                    rejected[status.partition(":")[2]] += count
            report["rows"] = sum(self.statuses.values())
            report["statuses"] = dict(sorted(self.statuses.items()))
            report["rejected"] = dict(sorted(rejected.items()))
        else:
            report["generated_templates"] = dict(sorted(self.generated.items()))
        return report

    def usage(self) -> dict[str, Any]:
        """What this run asked and spent (a re-run from the cache asks nothing)."""
        usage = self.session.client.account.as_dict()
        if self.expansion:
            usage["expansion"] = dict(sorted(self.expansion.items()))
        return usage


@contextmanager
def open_rewriting(
    config: RewriteConfig | None, api_key: str | None = None
) -> Iterator[Rewriting | None]:
    """The build's Rewriting, or None when the build rewrites nothing."""
    if config is None:
        yield None
        return
    with open_session(config.llm, api_key) as sess:
        yield Rewriting(config, sess)
