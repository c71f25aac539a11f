"""What a run shows: each stage's ``summary.json`` and the run's ``report.md`` (notebooks 01-05 and ``kit reproduce``).

Example:
    >>> markdown_table([{"init": "scratch", "dice": 0.5}])
    ['| init | dice |', '| --- | --- |', '| scratch | 0.500 |']
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from kit.stages import STAGES, stage_dir, write_json_atomic
from kit.tempfiles import write_text_atomic

def write_summary(run_dir: str | Path, stage: str, title: str, figures: dict, plots: list[str] | None = None,
                  tables: dict[str, list[dict]] | None = None) -> Path:
    """Record a stage's key figures (plain numbers/strings), tables and plot paths for ``report.md``.

    Args:
        run_dir: the run directory.
        stage: one of :data:`STAGES`.
        title: one line describing the stage's result.
        figures: key figures, e.g. ``{"subjects": 8, "retained_fraction": 0.61}``.
        plots: PNG paths (absolute or relative to the stage folder).
        tables: title -> rows (dicts of plain values, e.g. ``DataFrame.to_dict("records")``), drawn
            as markdown tables (floats to 3 decimals).

    Example:
        >>> write_summary(run_dir, "01_curation", "Curation", {"subjects": 8}, ["figures/qc.png"])  # doctest: +SKIP
    """
    folder = stage_dir(run_dir, stage)
    rel = [os.path.relpath(Path(p) if Path(p).is_absolute() else folder / p, folder) for p in plots or []]
    summary = {"title": title, "figures": figures, "plots": rel}
    if tables:
        summary["tables"] = tables
    return write_json_atomic(folder / "summary.json", summary)


def markdown_table(rows: list[dict]) -> list[str]:
    """Markdown lines of a table (columns of the first row; floats to 3 decimals, NaN as blank).

    Example:
        >>> markdown_table([{"init": "mim", "diff": 0.12345, "ci_low": float("nan")}])
        ['| init | diff | ci_low |', '| --- | --- | --- |', '| mim | 0.123 |  |']
    """
    if not rows:
        return []
    columns = list(rows[0])

    def cell(value) -> str:
        if isinstance(value, float):
            return "" if value != value else f"{value:.3f}"
        return str(value)

    return ([f"| {' | '.join(columns)} |", f"| {' | '.join('---' for _ in columns)} |"]
            + [f"| {' | '.join(cell(row.get(c)) for c in columns)} |" for row in rows])


SMOKE_BANNER = (
    "**Smoke run: this checks the plumbing, not the science.** A few training steps on a handful of "
    "4 mm synthetic subjects: every number below only shows that the code path ran. Read results "
    "from the `workshop` or `study` profiles."
)


def smoke_banner(profile: str) -> str | None:
    """The warning shown at the top of smoke reports and notebooks, or None for other profiles.

    Example:
        >>> smoke_banner("smoke").startswith("**Smoke run"), smoke_banner("workshop")
        (True, None)
    """
    return SMOKE_BANNER if profile == "smoke" else None


def show_smoke_banner(profile: str) -> None:
    """At the top of a notebook: display :data:`SMOKE_BANNER` for a smoke run (Markdown in Jupyter,
    a plain line elsewhere); nothing for other profiles.

    Example:
        >>> show_smoke_banner("workshop")  # prints nothing
    """
    banner = smoke_banner(profile)
    if banner is None:
        return
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display

        if get_ipython() is not None:
            display(Markdown(f"> {banner}"))
            return
    except ImportError:
        pass
    print(banner.replace("**", ""))


def write_report(run_dir: str | Path) -> Path:
    """Build ``RUN_DIR/report.md`` from each stage's ``summary.json`` (missing stages are listed as not run).

    A smoke run's report opens with :data:`SMOKE_BANNER` and leaves out the stages' one-line
    verdicts (a loss that went up, an accuracy of 1.0 on four subjects): its figures are listed as
    plumbing values.
    """
    run_dir = Path(run_dir)
    run = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
    banner = smoke_banner(run.get("profile", ""))
    lines = ["# brainfm-kit run report", ""]
    if banner:
        lines += [f"> {banner}", ""]
    if run:
        lines += [
            f"- profile: `{run.get('profile')}`, seed {run.get('seed')}, device `{run.get('device')}`,"
            f" data: {run.get('data_root') or 'synthetic cohorts'}",
            f"- kit {run.get('kit_version')}, started {run.get('started')}",
            "",
        ]
    for stage in STAGES:
        summary_path = run_dir / stage / "summary.json"
        status = (run.get("stages") or {}).get(stage, {})
        lines.append(f"## {stage}")
        if not summary_path.exists():
            lines += [f"_not run_{': ' + status['error'] if status.get('error') else ''}", ""]
            continue
        summary = json.loads(summary_path.read_text())
        lines.append("ran (smoke: plumbing values only)" if banner else summary.get("title", ""))
        if status.get("wall_s") is not None:
            lines.append(f"(wall time {status['wall_s']:.0f} s)")
        lines.append("")
        figures = summary.get("figures", {})
        if figures:
            lines += ["| figure | value |", "| --- | --- |"]
            lines += [f"| {k} | {v} |" for k, v in figures.items()]
            lines.append("")
        for name, rows in (summary.get("tables") or {}).items():
            lines += [f"**{name}**", "", *markdown_table(rows), ""]
        for plot in summary.get("plots", []):
            lines.append(f"![{Path(plot).stem}]({stage}/{plot})")
        lines.append("")
    return write_text_atomic(run_dir / "report.md", "\n".join(lines))
