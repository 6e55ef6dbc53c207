"""The paper's claims about MoDE, checked on a study's runs, and paired differences between studies.

Every (order, seed) run of a study trains all of its methods on the same tasks, in the same order,
with the same seed, so a claim is checked run by run: in each run a **margin** (in the metric's
units; positive or, where the claim allows a tie, zero means the claim holds in that run), then
the mean and sample standard deviation of the margins (:func:`cl_platform.sweeps.study.mean_std`)
and the number of runs in which it holds. The claims (``method`` is MoDE, ``mode``; the
baselines are the study's other methods outside :data:`MODE_FAMILY`):

- ``generation``: MoDE's generation drop is at most half of each baseline's:
  margin = drop(baseline) / 2 - drop(MoDE), holds at >= 0;
- ``forgetting``: MoDE's average forgetting is below each baseline's:
  margin = forgetting(baseline) - forgetting(MoDE), holds at > 0;
- ``accuracy``: MoDE's final average accuracy is at least the best baseline's in that run:
  margin = accuracy(MoDE) - max over baselines, holds at >= 0.

A verdict says ``holds in every run`` (all n), ``holds on average`` (the mean margin holds but not
every run does) or ``does not hold``, with the count. :func:`paired_difference` compares one
method of one study with one method of another over the cells both finished (same order index,
same seed, the same order), e.g. with against without replay.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from cl_platform.sweeps.study import DONE, mean_std

#: The method whose claims are checked.
MODE = "mode"
#: MoDE and its ablations: never a baseline of the claims.
MODE_FAMILY = ("mode", "mode_nokd")

#: claim -> (metric, statement, whether a zero margin holds).
CLAIMS: dict[str, tuple[str, str, bool]] = {
    "generation": ("generation_drop", "MoDE's generation drop is at most half of each baseline's", True),
    "forgetting": ("avg_forgetting", "MoDE's average forgetting is below each baseline's", False),
    "accuracy": ("avg_accuracy", "MoDE's final average accuracy is at least the best baseline's", True),
}


def baselines_of(methods: Sequence[str]) -> list[str]:
    """The study's methods the claims compare MoDE with (all but :data:`MODE_FAMILY`), in order."""
    return [m for m in methods if m not in MODE_FAMILY]


def _margin(claim: str, mode: float, others: Sequence[float]) -> float:
    if claim == "generation":
        return others[0] / 2 - mode
    if claim == "forgetting":
        return others[0] - mode
    return mode - max(others)


def verdict(margins: Sequence[float], allow_tie: bool) -> dict[str, Any]:
    """``{"margin": mean_std, "holds", "runs", "verdict"}`` of one comparison's per-run margins."""
    ok = [m >= 0 if allow_tie else m > 0 for m in margins]
    stat = mean_std(margins)
    k, n = sum(ok), len(ok)
    if k == n:
        text = f"holds in every run ({n} of {n})"
    elif (stat["mean"] >= 0 if allow_tie else stat["mean"] > 0):
        text = f"holds on average, in {k} of {n} runs"
    else:
        text = f"does not hold (holds in {k} of {n} runs)"
    return {"margin": stat, "holds": k, "runs": n, "verdict": text}


def paper_claims(methods: Sequence[str], runs: Sequence[Mapping[str, Any]], *, method: str = MODE,
                 baselines: Optional[Sequence[str]] = None) -> list[dict[str, Any]]:
    """Each claim of :data:`CLAIMS` over the finished ``runs`` (study rows: ``status``, ``metrics``
    method -> metric -> value); empty when ``method`` or every baseline is absent.

    One entry per claim: ``{"claim", "metric", "statement", "rows"}``, a row per baseline (the
    accuracy claim: one row against the best baseline of each run) holding ``against`` and
    :func:`verdict`'s fields. A run that lacks a metric of a comparison is left out of it.
    """
    base = list(baselines) if baselines is not None else baselines_of(methods)
    done = [r for r in runs if r.get("status") == DONE and method in r["metrics"]]
    base = [b for b in base if b != method and any(b in r["metrics"] for r in done)]
    if not done or not base:
        return []
    out = []
    for claim, (metric, statement, allow_tie) in CLAIMS.items():
        groups = [[b] for b in base] if claim != "accuracy" else [base]
        rows = []
        for group in groups:
            margins = [_margin(claim, r["metrics"][method][metric], [r["metrics"][b][metric] for b in group])
                       for r in done
                       if metric in r["metrics"][method] and all(metric in r["metrics"].get(b, {}) for b in group)]
            if margins:
                against = group[0] if len(group) == 1 else "best of " + ", ".join(group)
                rows.append({"against": against, **verdict(margins, allow_tie)})
        if rows:
            out.append({"claim": claim, "metric": metric, "statement": statement, "method": method, "rows": rows})
    return out


def _cells(doc: Mapping[str, Any], method: str, metric: str) -> dict[tuple[int, int], tuple[list[str], float]]:
    return {(r["order_index"], r["seed"]): (list(r["order"]), r["metrics"][method][metric]) for r in doc["runs"]
            if r.get("status") == DONE and metric in r["metrics"].get(method, {})}


def paired_difference(doc_a: Mapping[str, Any], method_a: str, doc_b: Mapping[str, Any], method_b: str,
                      metric: str) -> Optional[dict[str, Any]]:
    """:func:`mean_std` of ``metric`` of ``method_a`` in study ``doc_a`` minus that of ``method_b``
    in ``doc_b``, over the cells (order index, seed) both finished; ``None`` when none is shared.
    ``ValueError`` when a shared cell ran a different task order in the two studies (studies
    drawn with other ``--order`` or ``--order-seed`` are not paired)."""
    a, b = _cells(doc_a, method_a, metric), _cells(doc_b, method_b, metric)
    diffs = []
    for key in sorted(set(a) & set(b)):
        if a[key][0] != b[key][0]:
            raise ValueError(f"order {key[0]}: study {doc_a['study']!r} ran {a[key][0]} but study "
                             f"{doc_b['study']!r} ran {b[key][0]}; they cannot be paired")
        diffs.append(a[key][1] - b[key][1])
    return mean_std(diffs) if diffs else None


def _pct(stat: Mapping[str, Any]) -> str:
    std = "-" if stat["std"] is None else f"{100 * stat['std']:.1f}"
    return f"{100 * stat['mean']:+.1f} ± {std}"


def claims_section(claims: Sequence[Mapping[str, Any]]) -> list[str]:
    """Markdown lines of the claims (none when there are none): one table row per comparison."""
    if not claims:
        return []
    lines = ["## The paper's claims", "",
             "Per run (same order and seed for every method), the margin by which the claim holds (points; "
             "negative: it fails by that much), mean ± std over the runs, and in how many runs it holds.", "",
             "| claim | against | margin (points) | holds in | verdict |", "|---|---|---:|---:|---|"]
    for c in claims:
        for r in c["rows"]:
            lines.append(f"| {c['statement']} | {r['against']} | {_pct(r['margin'])} | {r['holds']} of {r['runs']} | "
                         f"{r['verdict']} |")
    return lines + [""]
