"""The lineage report: ``<store>/lineages/<name>/report/`` (``report.md``, the accuracy matrix and
the generation curve as PNGs), rewritten after every learned round from
:func:`~cl_platform.scheduler.progress.lineage_summary`."""

from __future__ import annotations

from typing import Any, Mapping

from cl_platform.eval.report import plot_matrix, plot_score_lines
from cl_platform.scheduler.config import lineage_dir
from cl_platform.store import Store

MATRIX_PNG, CURVE_PNG, REPORT_MD = "accuracy_matrix.png", "generation_curve.png", "report.md"


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100.0 * v:.1f}"


def _signed(v: Any) -> str:
    return "-" if v is None else f"{100.0 * v:+.1f}"


def render_lineage_markdown(lineage: str, summary: Mapping[str, Any], *, images: bool = True) -> str:
    """The report's markdown (values in %, differences in percentage points)."""
    tasks = list(summary["tasks"])
    out = [f"# Lineage report: {lineage}", "", f"{len(tasks)} learned tasks, in order: " + ", ".join(tasks), ""]
    trend = summary.get("trend") or {}
    out += ["## Summary", "", "| metric | value | change since the previous round |", "|:---|---:|---:|",
            f"| avg accuracy (%) | {_pct(summary['avg_accuracy'])} | {_signed(trend.get('avg_accuracy'))} |",
            f"| avg forgetting (points) | {_pct(summary['avg_forgetting'])} | {_signed(trend.get('avg_forgetting'))} |",
            f"| generation drop vs base (points) | {_pct(summary['generation_drop'])} | "
            f"{_signed(-trend['generation_score'] if trend.get('generation_score') is not None else None)} |", ""]
    out += ["## Accuracy matrix (%)", "", "Row *i*: accuracy on the tasks learned so far after round *i*.", "",
            "| after round | " + " | ".join(tasks) + " |", "|:---|" + "---:|" * len(tasks)]
    for i, row in enumerate(summary["accuracy_matrix"]):
        cells = [_pct(v) for v in row] + [""] * (len(tasks) - len(row))
        out.append(f"| {i + 1}: {tasks[i]} | " + " | ".join(cells) + " |")
    out.append("")
    if images:
        out += [f"![accuracy matrix]({MATRIX_PNG})", ""]
    curve = summary["generation_curve"]
    out += ["## Generation score (%)", "", "| base | " + " | ".join(f"after {i + 1}: {t}" for i, t in enumerate(tasks)) + " |",
            "|" + "---:|" * len(curve), "| " + " | ".join(_pct(v) for v in curve) + " |", ""]
    if images and curve and all(v is not None for v in curve):
        out += [f"![generation curve]({CURVE_PNG})", ""]
    return "\n".join(out)


def write_lineage_report(store: Store, lineage: str, summary: Mapping[str, Any]) -> list[str]:
    """Write the report (PNGs first, the markdown last); returns the store paths written."""
    tasks = list(summary["tasks"])
    if not tasks:
        return []
    folder = f"{lineage_dir(lineage)}/report"
    written = []
    nan = float("nan")
    square = [[nan if v is None else v for v in row] + [nan] * (len(tasks) - len(row)) for row in summary["accuracy_matrix"]]
    store.write_bytes(f"{folder}/{MATRIX_PNG}", plot_matrix(square, tasks, f"accuracy matrix: lineage {lineage}"))
    written.append(f"{folder}/{MATRIX_PNG}")
    curve = summary["generation_curve"]
    if curve and all(v is not None for v in curve):
        store.write_bytes(f"{folder}/{CURVE_PNG}", plot_score_lines({lineage: curve}, tasks))
        written.append(f"{folder}/{CURVE_PNG}")
    store.write_bytes(f"{folder}/{REPORT_MD}", render_lineage_markdown(lineage, summary).encode("utf-8"))
    return [f"{folder}/{REPORT_MD}", *written]


__all__ = ["render_lineage_markdown", "write_lineage_report"]
