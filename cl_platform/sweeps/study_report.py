"""A study's readable outputs from its ``study.json`` object: tables, ``summary.md`` and bar charts.

Values are shown times 100 (accuracies in %, forgetting, BWT, FWT and drops in percentage points)
as ``mean ± std``; a standard deviation of a single value shows as ``-``. One PNG per metric
(``plot_<metric>.png``): the methods side by side in a group for all runs and one per order, each
bar the mean with the standard deviation as its error bar. Plots are drawn on matplotlib
``Figure`` objects with the Agg canvas.
"""

from __future__ import annotations

import io
from typing import Any, Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cl_platform.sweeps.claims import claims_section


def metric_names(doc: Mapping[str, Any]) -> list[str]:
    """Every metric of the study's overall aggregate, in first-seen order."""
    names: dict[str, None] = {}
    for per in doc["overall"].values():
        for m in per:
            names.setdefault(m, None)
    return list(names)


def cell(stat: Mapping[str, Any] | None) -> str:
    """``mean ± std`` times 100 (``-`` for no value, ``± -`` for no spread)."""
    if not stat:
        return "-"
    std = "-" if stat.get("std") is None else f"{100 * stat['std']:.1f}"
    return f"{100 * stat['mean']:.1f} ± {std}"


def _rows(aggregate: Mapping[str, Mapping[str, Any]], metrics: Sequence[str]) -> list[list[str]]:
    return [[m, str(max((s["n"] for s in per.values()), default=0)), *(cell(per.get(x)) for x in metrics)]
            for m, per in aggregate.items()]


def format_table(aggregate: Mapping[str, Mapping[str, Any]], metrics: Sequence[str]) -> str:
    """A fixed-width terminal table: one row per method, one column per metric."""
    header = ["method", "runs", *metrics]
    rows = [header, *_rows(aggregate, metrics)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _md_table(aggregate: Mapping[str, Mapping[str, Any]], metrics: Sequence[str]) -> list[str]:
    header = ["method", "runs", *metrics]
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in _rows(aggregate, metrics)]
    return out


def render_summary(doc: Mapping[str, Any], images: Mapping[str, str] | None = None) -> str:
    """``summary.md``: the overall table, one table per order, the runs and the failed ones, the plots."""
    metrics = metric_names(doc)
    done = [r for r in doc["runs"] if r["status"] == "done"]
    lines = [f"# Study {doc['study']}", "",
             f"Methods {', '.join(doc['methods'])}; {len(doc['orders'])} order(s) x {len(doc['seeds'])} seed(s) "
             f"({', '.join(str(s) for s in doc['seeds'])}); {len(done)} of {len(doc['runs'])} runs finished.",
             "", f"Values x 100, mean ± standard deviation (ddof {doc['std_ddof']}) over the finished runs.", "",
             "## All orders and seeds", "", *_md_table(doc["overall"], metrics), "",
             *claims_section(doc.get("claims") or [])]
    for o in doc["per_order"]:
        lines += [f"## Order {o['order_index']}: {' → '.join(o['order'])}", "",
                  f"Over the seeds of this order ({len(o['runs'])} run(s)).", "",
                  *(_md_table(o["methods"], metrics) if o["methods"] else ["No finished run."]), ""]
    lines += ["## Runs", "", "| run | order | seed | status |", "|---|---:|---:|---|"]
    lines += [f"| {r['run']} | {r['order_index']} | {r['seed']} | {r['status']} |" for r in doc["runs"]]
    if doc["failed"]:
        lines += ["", "## Failed runs (left out of every table)", ""]
        lines += [f"- `{f['run']}`: {f['error']}" for f in doc["failed"]]
    if images:
        lines += ["", "## Plots", ""] + [f"![{m}]({path})" for m, path in images.items()]
    return "\n".join(lines) + "\n"


def plot_metric(doc: Mapping[str, Any], metric: str) -> bytes:
    """PNG bar chart of one metric: methods side by side, for all runs and per order, std error bars."""
    groups = [("all", doc["overall"])] + [(f"order {o['order_index']}", o["methods"]) for o in doc["per_order"]]
    methods = list(doc["overall"])
    width = 0.8 / max(1, len(methods))
    fig = Figure(figsize=(max(5.0, 1.3 * len(groups) * max(1, len(methods)) * 0.6 + 2), 4))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for i, method in enumerate(methods):
        xs, ys, errs = [], [], []
        for g, (_, agg) in enumerate(groups):
            stat = agg.get(method, {}).get(metric)
            if stat is None:
                continue
            xs.append(g + (i - (len(methods) - 1) / 2) * width)
            ys.append(100 * stat["mean"])
            errs.append(0.0 if stat["std"] is None else 100 * stat["std"])
        ax.bar(xs, ys, width, yerr=errs, capsize=3, label=method, color=f"C{i}")
    ax.set_xticks(range(len(groups)), [g for g, _ in groups])
    ax.set_ylabel(f"{metric} (x 100)")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_title(f"{doc['study']}: {metric}, mean ± std")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def image_name(metric: str) -> str:
    """File name of a metric's bar chart."""
    return f"plot_{metric}.png"


def study_images(doc: Mapping[str, Any]) -> dict[str, bytes]:
    """Metric -> PNG bytes of its bar chart."""
    return {m: plot_metric(doc, m) for m in metric_names(doc)}
