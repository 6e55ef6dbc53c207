"""The method study at the benchmark's defaults, read back from finished studies.

Reads ``<store>/studies/<name>/study.json`` of a study without replay (``--plain``), one with
replay (``--replay``) and one of MoDE with the other generation routing (``--routing``), all run
by ``jobs/study.py`` over the same orders and seeds, e.g.::

    python jobs/study.py --suite digits --methods mode,mode_nokd,moe_lora,seq_lora,olora \\
        --orders 3 --seeds 2 --name defaults
    python jobs/study.py ... --name replay --replay-fraction 0.25
    python jobs/study.py --suite digits --methods mode --orders 3 --seeds 2 --name seqrouting \\
        --generation-routing sequence

and prints the markdown of ``docs/science.md``'s method study: per study, mean ± std over its runs
of every reported metric per method, the paper's claims (:mod:`cl_platform.sweeps.claims`), the
paired effect of replay per method and of the routing on MoDE; writes ``method_study.png``
(final average accuracy, average forgetting and generation drop per method, without and with
replay, error bars one std) under ``<store>/studies/`` and, with ``--image``, there too; prints
one JSON line last.

    python benchmarks/method_study.py [--store ./.cl_store] [--plain defaults] [--replay replay]
        [--routing seqrouting] [--image docs/images/method_study.png]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from typing import Any, Mapping, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: (metric, column title, scale): accuracies, forgetting, BWT and drops x 100; gradient figures as they are.
COLUMNS = (("plasticity", "plasticity", 100), ("avg_accuracy", "final avg acc", 100),
           ("earlier_accuracy", "kept (earlier tasks)", 100), ("avg_forgetting", "forgetting", 100), ("bwt", "BWT", 100),
           ("generation_drop", "generation drop", 100), ("ranking_avg_accuracy", "ranking acc", 100),
           ("ranking_forgetting", "ranking forgetting", 100), ("gradient_cosine", "grad cosine", 1),
           ("gradient_task_share", "task share", 1), ("gradient_generation_share", "generation share", 1))
#: The metrics of the paired effects (replay, routing).
EFFECTS = ("plasticity", "avg_accuracy", "earlier_accuracy", "avg_forgetting", "generation_drop",
           "ranking_forgetting")
#: The metrics of the plot.
PLOTTED = (("avg_accuracy", "final average accuracy (%)"), ("avg_forgetting", "average forgetting (points)"),
           ("generation_drop", "generation drop (points)"))


def fmt(stat: Optional[Mapping[str, Any]], scale: float, signed: bool = False) -> str:
    """``mean ± std`` scaled (``-``: no value; ``± -``: a single value)."""
    if not stat:
        return "-"
    places = 1 if scale == 100 else 2
    mean = f"{scale * stat['mean']:{'+' if signed else ''}.{places}f}"
    std = "-" if stat["std"] is None else f"{scale * stat['std']:.{places}f}"
    return f"{mean} ± {std}"


def metrics_table(doc: Mapping[str, Any]) -> list[str]:
    """One row per method, one column per metric of :data:`COLUMNS` that some method carries."""
    cols = [c for c in COLUMNS if any(c[0] in per for per in doc["overall"].values())]
    lines = ["| method | runs | " + " | ".join(t for _, t, _ in cols) + " |", "|---|---:|" + "---:|" * len(cols)]
    for method, per in doc["overall"].items():
        n = max((s["n"] for s in per.values()), default=0)
        lines.append(f"| {method} | {n} | " + " | ".join(fmt(per.get(m), s) for m, _, s in cols) + " |")
    return lines


def effects_table(title: str, pairs: Sequence[tuple[str, Mapping[str, Any], str, Mapping[str, Any], str]]) -> list[str]:
    """Paired differences (a minus b) over shared cells, one row per ``(label, doc_a, method_a, doc_b, method_b)``."""
    from cl_platform.sweeps.claims import paired_difference

    lines = [f"| {title} | " + " | ".join(f"Δ {m}" for m in EFFECTS) + " |", "|---|" + "---:|" * len(EFFECTS)]
    for label, a, ma, b, mb in pairs:
        lines.append(f"| {label} | " + " | ".join(fmt(paired_difference(a, ma, b, mb, m), 100, signed=True)
                                                   for m in EFFECTS) + " |")
    return lines


def plot(plain: Mapping[str, Any], replay: Optional[Mapping[str, Any]]) -> bytes:
    """PNG: per metric of :data:`PLOTTED`, the methods' means with one-std error bars, without and with replay."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    studies = [("no replay", plain)] + ([("replay", replay)] if replay else [])
    methods = list(plain["overall"])
    fig = Figure(figsize=(4.2 * len(PLOTTED), 3.8))
    FigureCanvasAgg(fig)
    width = 0.8 / len(studies)
    for k, (metric, title) in enumerate(PLOTTED):
        ax = fig.add_subplot(1, len(PLOTTED), k + 1)
        for j, (label, doc) in enumerate(studies):
            stats = [doc["overall"].get(m, {}).get(metric) for m in methods]
            xs = [i + (j - (len(studies) - 1) / 2) * width for i in range(len(methods))]
            ax.bar(xs, [100 * s["mean"] if s else 0 for s in stats], width,
                   yerr=[100 * (s["std"] or 0) if s else 0 for s in stats], capsize=3, label=label, color=f"C{j}")
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
        ax.set_title(title, fontsize=10)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.grid(axis="y", alpha=0.3)
        if k == 0:
            ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def study_lines(doc: Mapping[str, Any]) -> list[str]:
    """The section of one study: settings line, metrics table, claims table, failed runs."""
    from cl_platform.sweeps.claims import claims_section

    done = [r for r in doc["runs"] if r["status"] == "done"]
    orders = "; ".join(" → ".join(o) for o in doc["orders"])
    lines = [f"### Study `{doc['study']}`", "",
             f"{len(done)} of {len(doc['runs'])} runs finished; orders: {orders}; seeds "
             f"{', '.join(str(s) for s in doc['seeds'])}. Mean ± sample std over the runs (accuracies in %, "
             "forgetting, BWT and drops in points; gradient figures as fractions, averaged over the rounds).", "",
             *metrics_table(doc), ""]
    lines += [ln.replace("## The paper's claims", "#### The paper's claims") for ln in claims_section(doc.get("claims") or [])]
    lines += [f"- failed, left out: `{f['run']}`: {f['error']}" for f in doc["failed"]]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", default=f"file://{os.path.join(ROOT, '.cl_store')}")
    p.add_argument("--plain", default="defaults", help="study without replay (default defaults)")
    p.add_argument("--replay", default="replay", help="study with replay ('' : none; default replay)")
    p.add_argument("--routing", default="seqrouting", help="study of mode with the other routing ('' : none)")
    p.add_argument("--image", default=None, help="also copy the plot here (e.g. docs/images/method_study.png)")
    args = p.parse_args(argv)
    from cl_platform.store import Store

    store = Store(args.store)
    plain = store.read_json(f"studies/{args.plain}/study.json")
    replay = store.read_json(f"studies/{args.replay}/study.json") if args.replay else None
    routing = store.read_json(f"studies/{args.routing}/study.json") if args.routing else None
    lines = study_lines(plain) + [""]
    if replay:
        lines += study_lines(replay) + [""]
        lines += ["### Replay, paired by order and seed", "",
                  "Per method, with replay minus without, over the (order, seed) cells both studies finished.", "",
                  *effects_table("method", [(m, replay, m, plain, m) for m in plain["overall"] if m in replay["overall"]]),
                  ""]
    if routing:
        other = routing["settings"].get("method_config", {}).get("generation_routing", "sequence")
        lines += [f"### Generation routing: `{other}` against `token`, paired by order and seed", "",
                  f"MoDE with `--generation-routing {other}` (study `{routing['study']}`) minus MoDE with `token` "
                  f"(study `{plain['study']}`).", "",
                  *effects_table("method", [("mode", routing, "mode", plain, "mode")]), "",
                  *metrics_table(routing), ""]
    png = plot(plain, replay)
    store.write_bytes("studies/method_study.png", png)
    if args.image:
        with open(args.image, "wb") as f:
            f.write(png)
    print("\n".join(lines))
    print(json.dumps({"benchmark": "method_study", "studies": [d["study"] for d in (plain, replay, routing) if d],
                      "plot": store.uri("studies/method_study.png"),
                      "claims": {d["study"]: {f"{c['claim']}/{r['against']}": r["verdict"] for c in d.get("claims") or []
                                              for r in c["rows"]} for d in (plain, replay) if d}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
