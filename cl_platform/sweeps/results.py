"""A sweep's results under ``<store>/sweeps/<name>/``: table, best configurations, Pareto plot, summary.

Files (all rewritten at the end of every sweep call, resumed ones included):

- ``trials.json``: every trial: id, number, Tune status, ``state`` (``completed``: all rounds;
  ``stopped``: stopped early by ASHA; ``error``; ``unfinished``: the sweep was interrupted),
  ``is_default`` (the MoDE default configuration), ``params``, ``orders`` and ``runs``,
  ``per_round`` (one row per round: ``avg_accuracy``, ``generation_score``, ``generation_drop``,
  their ``_std`` over orders and per-order values) and ``final`` (the last round's row plus the
  finished runs' forgetting / BWT / FWT means), or ``null`` for trials that did not finish.
- ``trials.csv``: the same, flat: one line per trial, per-round values as ``<metric>@r<k>``.
- ``best.json``: the objectives and the best configuration(s) among the completed trials: the
  top trial for a single objective, the Pareto set for two.
- ``pareto.json``: the Pareto set over (``avg_accuracy`` max, ``generation_drop`` min) of the
  completed trials, whatever the objectives, with the default configuration's point.
- ``pareto.png``: accuracy against generation drop, one point per trial (early-stopped trials
  faded at their last round), the front highlighted, the MoDE default marked.
- ``summary.md``: the sweep, its space, the best configuration(s), every trial, and where Tune's
  state and TensorBoard logs are: a directory of the machine that ran the sweep driver, never the
  store (:mod:`cl_platform.sweeps.runner`).

Per-round metrics are read from the trials' run ledgers (the authoritative record; a restarted
trial does not duplicate rounds), and aggregated exactly as the trials report them to Tune.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any, Mapping, Optional, Sequence

from cl_platform.store import Store
from cl_platform.sweeps.pareto import best_index, pareto_front
from cl_platform.sweeps.space import SweepSpec, default_point
from cl_platform.sweeps.trial import TrialPlan, aggregate_histories, history_from_ledger, run_names

#: The axes of the Pareto front (plot and ``pareto.json``).
PARETO_OBJECTIVES = (("avg_accuracy", "max"), ("generation_drop", "min"))
FINAL_EXTRA = ("avg_forgetting", "bwt", "fwt")
_FILES = {"table_json": "trials.json", "table_csv": "trials.csv", "best": "best.json", "pareto": "pareto.json",
          "plot": "pareto.png", "summary": "summary.md"}


def _finite(x: Any) -> Optional[float]:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN / inf become ``None``."""
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        return _clean(obj.item())
    return obj


def _same_point(params: Mapping[str, Any], point: Mapping[str, Any]) -> bool:
    for k, v in point.items():
        p = params.get(k)
        if isinstance(v, float) or isinstance(p, float):
            if p is None or not math.isclose(float(p), float(v), rel_tol=1e-9, abs_tol=1e-12):
                return False
        elif p != v:
            return False
    return True


def collect_trials(store: Store, spec: SweepSpec, plan: TrialPlan, trials: Sequence[Any], *,
                   finished: Optional[set] = None) -> list[dict[str, Any]]:
    """One row per Tune trial (objects with ``trial_id``, ``config``, ``status``), from the ledgers.

    ``finished``: ids of the trials that really ended; a TERMINATED trial not in it was stopped
    by an interruption and counts as ``unfinished`` (``None``: trust Tune's status).
    """
    from cl_platform.train.ledger import Ledger

    searched = [d.name for d in spec.space] + (["order"] if "order" in _space_names(trials) else [])
    default = default_point(spec)
    if "order" not in searched:
        default.pop("order", None)
    rows = []
    for number, trial in enumerate(trials, 1):
        params = {k: _clean(trial.config[k]) for k in searched if k in trial.config}
        orders = plan.trial_orders(params)
        runs = run_names(plan.sweep, trial.trial_id, len(orders))
        histories, extras = [], []
        for run in runs:
            if Ledger.exists(store, run):
                histories.append(history_from_ledger(Ledger.open(store, run), plan.method))
            else:
                histories.append([])
            if store.exists(f"runs/{run}/results.json"):
                extras.append(store.read_json(f"runs/{run}/results.json")["methods"][plan.method]["metrics"])
        per_round = aggregate_histories(histories)
        status = str(trial.status)
        complete = len(per_round) == spec.num_rounds
        if status == "TERMINATED" and finished is not None and trial.trial_id not in finished:
            state = "unfinished"
        elif status == "TERMINATED":
            state = "completed" if complete else "stopped"
        elif status == "ERROR":
            state = "error"
        else:
            state = "unfinished"
        final = None
        if state == "completed":
            final = dict(per_round[-1])
            for m in FINAL_EXTRA:
                vals = [e[m] for e in extras if _finite(e.get(m)) is not None]
                final[m] = sum(vals) / len(vals) if vals and len(extras) == len(runs) else None
        rows.append(_clean({
            "trial_id": trial.trial_id, "number": number, "status": status, "state": state,
            "is_default": spec.search.include_default and _same_point(params, default),
            "params": params, "orders": [list(o) for o in orders], "runs": runs,
            "rounds_done": len(per_round), "per_round": per_round, "final": final,
            "last": per_round[-1] if per_round else None,
        }))
    return rows


def _space_names(trials: Sequence[Any]) -> set[str]:
    return {k for t in trials for k in (t.config or {})}


# ------------------------------------------------------------------------------ best / Pareto


def _metric(row: Mapping[str, Any], metric: str) -> Optional[float]:
    return _finite((row.get("final") or {}).get(metric))


def best_rows(rows: Sequence[Mapping[str, Any]], objectives: Sequence[tuple[str, str]]) -> list[Mapping[str, Any]]:
    """The best completed trial (one objective) or the Pareto set (two), best first / by the first objective."""
    done = [r for r in rows if r["state"] == "completed"]
    if not done:
        return []
    if len(objectives) == 1:
        m, mode = objectives[0]
        i = best_index([_metric(r, m) for r in done], mode)
        return [] if i is None else [done[i]]
    front = [done[i] for i in pareto_front([[_metric(r, m) for m, _ in objectives] for r in done],
                                           [mode for _, mode in objectives])]
    m, mode = objectives[0]
    return sorted(front, key=lambda r: _metric(r, m) * (-1 if mode == "max" else 1))


def _brief(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"trial_id": row["trial_id"], "number": row["number"], "is_default": row["is_default"],
            "params": row["params"], "orders": row["orders"], "runs": row["runs"], "final": row["final"]}


# ------------------------------------------------------------------------------ files


def trials_csv(rows: Sequence[Mapping[str, Any]], spec: SweepSpec) -> str:
    """The flat table: one line per trial."""
    params = sorted({k for r in rows for k in r["params"]})
    metrics = ["avg_accuracy", "avg_accuracy_std", "generation_score", "generation_drop", "generation_drop_std"]
    header = (["number", "trial_id", "state", "status", "is_default", *params, "orders", "rounds_done"]
              + [f"final_{m}" for m in metrics + list(FINAL_EXTRA)]
              + [f"{m}@r{k + 1}" for k in range(spec.num_rounds) for m in ("avg_accuracy", "generation_drop")])
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for r in rows:
        final = r["final"] or {}
        per = {k: row for k, row in enumerate(r["per_round"])}
        w.writerow([r["number"], r["trial_id"], r["state"], r["status"], r["is_default"],
                    *[r["params"].get(p, "") for p in params], " | ".join(">".join(o) for o in r["orders"]),
                    r["rounds_done"], *[_cell(final.get(m)) for m in metrics + list(FINAL_EXTRA)],
                    *[_cell(per.get(k, {}).get(m)) for k in range(spec.num_rounds)
                      for m in ("avg_accuracy", "generation_drop")]])
    return buf.getvalue()


def _cell(x: Any) -> str:
    return "" if x is None else (f"{x:.6g}" if isinstance(x, float) else str(x))


def write_sweep_results(store: Store, prefix: str, spec: SweepSpec, rows: Sequence[Mapping[str, Any]], *,
                        seconds: float, teacher_cache: Optional[str] = None,
                        tune: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """Write every result file (module docstring); returns name -> store path.

    ``tune``: ``{"host", "dir"}`` of the local Tune directory, named in ``summary.md``."""
    paths = {k: f"{prefix}/{v}" for k, v in _FILES.items()}
    objectives = [tuple(o) for o in spec.search.objectives]
    default = next((r for r in rows if r["is_default"]), None)
    store.write_json(paths["table_json"], _clean({"sweep": spec.name, "objectives": dict(objectives),
                                                  "num_rounds": spec.num_rounds, "trials": list(rows)}))
    store.write_bytes(paths["table_csv"], trials_csv(rows, spec).encode())
    best = best_rows(rows, objectives)
    store.write_json(paths["best"], _clean({
        "sweep": spec.name, "objectives": dict(objectives), "multi_objective": len(objectives) > 1,
        "kind": "pareto_set" if len(objectives) > 1 else "best", "best": [_brief(r) for r in best],
        "default": _brief(default) if default else None}))
    front = best_rows(rows, PARETO_OBJECTIVES)
    store.write_json(paths["pareto"], _clean({
        "sweep": spec.name, "objectives": dict(PARETO_OBJECTIVES), "front": [_brief(r) for r in front],
        "default": _brief(default) if default else None,
        "default_on_front": bool(default and any(r["trial_id"] == default["trial_id"] for r in front)),
        "points": [{"trial_id": r["trial_id"], "state": r["state"], "avg_accuracy": (r["last"] or {}).get("avg_accuracy"),
                    "generation_drop": (r["last"] or {}).get("generation_drop"), "rounds_done": r["rounds_done"]}
                   for r in rows]}))
    store.write_bytes(paths["plot"], pareto_png(rows, front, spec))
    store.write_bytes(paths["summary"], summary_markdown(spec, rows, best, front, seconds=seconds,
                                                         teacher_cache=teacher_cache, tune=tune).encode())
    return paths


def pareto_png(rows: Sequence[Mapping[str, Any]], front: Sequence[Mapping[str, Any]], spec: SweepSpec) -> bytes:
    """Accuracy (%) against generation drop (pp): every trial, the front highlighted, the default marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.8), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    front_ids = {r["trial_id"] for r in front}

    def xy(r, key="last"):
        m = r[key] or {}
        x, y = _finite(m.get("generation_drop")), _finite(m.get("avg_accuracy"))
        if x is None or y is None:
            return None
        return 100 * x, 100 * y, 100 * (_finite(m.get("generation_drop_std")) or 0), 100 * (_finite(m.get("avg_accuracy_std")) or 0)

    done = [(r, xy(r)) for r in rows if r["state"] == "completed" and xy(r)]
    early = [(r, xy(r)) for r in rows if r["state"] != "completed" and xy(r)]
    if early:
        ax.scatter([p[0] for _, p in early], [p[1] for _, p in early], marker="x", color="0.6",
                   label="stopped early / unfinished (last round)")
    others = [(r, p) for r, p in done if r["trial_id"] not in front_ids]
    if others:
        ax.errorbar([p[0] for _, p in others], [p[1] for _, p in others], xerr=[p[2] for _, p in others],
                    yerr=[p[3] for _, p in others], fmt="o", color="tab:blue", alpha=0.7, label="trial (all rounds)")
    fr = sorted([(r, p) for r, p in done if r["trial_id"] in front_ids], key=lambda t: t[1][0])
    if fr:
        ax.errorbar([p[0] for _, p in fr], [p[1] for _, p in fr], xerr=[p[2] for _, p in fr],
                    yerr=[p[3] for _, p in fr], fmt="o", color="tab:red", markersize=8, label="Pareto front")
        ax.step([p[0] for _, p in fr], [p[1] for _, p in fr], where="post", color="tab:red", alpha=0.6)
    for r, p in done + early:
        ax.annotate(str(r["number"]), (p[0], p[1]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    default = next(((r, p) for r, p in done + early if r["is_default"]), None)
    if default:
        ax.scatter([default[1][0]], [default[1][1]], marker="*", s=260, facecolor="gold", edgecolor="black",
                   zorder=5, label="MoDE default config")
    elif not done and not early:
        ax.text(0.5, 0.5, "no trial finished a round", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("generation drop (pp; lower is better)")
    ax.set_ylabel("average accuracy (%; higher is better)")
    orders = len(spec.orders.orders) if spec.orders.per_trial == "all" else 1
    ax.set_title(f"sweep {spec.name}: {spec.method}, {spec.num_rounds} tasks"
                 + (f", mean of {orders} orders" if orders > 1 else ""), fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _pct(x: Any) -> str:
    x = _finite(x)
    return "-" if x is None else f"{100 * x:.1f}"


def _params_text(p: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(p.items()))


def _trial_table(rows: Sequence[Mapping[str, Any]], params: Sequence[str], *, markdown: bool) -> list[str]:
    head = ["#", "trial", "state", "rounds", *params, "avg acc %", "± std", "gen drop pp", "± std", ""]
    body = []
    for r in rows:
        m = r["final"] or r["last"] or {}
        p = r["params"]
        body.append([str(r["number"]), r["trial_id"], r["state"], str(r["rounds_done"]),
                     *[(f"{p[k]:.3g}" if isinstance(p.get(k), float) else str(p.get(k, "-"))) for k in params],
                     _pct(m.get("avg_accuracy")), _pct(m.get("avg_accuracy_std")), _pct(m.get("generation_drop")),
                     _pct(m.get("generation_drop_std")), "default" if r["is_default"] else ""])
    if markdown:
        return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(b) + " |" for b in body]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [fmt(head), fmt(["-" * w for w in widths])] + [fmt(b) for b in body]


def summary_markdown(spec: SweepSpec, rows: Sequence[Mapping[str, Any]], best: Sequence[Mapping[str, Any]],
                     front: Sequence[Mapping[str, Any]], *, seconds: float, teacher_cache: Optional[str],
                     tune: Optional[Mapping[str, str]] = None) -> str:
    """The sweep's ``summary.md``."""
    params = [d.name for d in spec.space] + (["order"] if any("order" in r["params"] for r in rows) else [])
    counts = {s: sum(r["state"] == s for r in rows) for s in ("completed", "stopped", "error", "unfinished")}
    objectives = ", ".join(f"{m} ({mode})" for m, mode in spec.search.objectives)
    sched = spec.search.scheduler
    lines = [f"# Sweep `{spec.name}`", ""]
    if spec.description:
        lines += [spec.description.strip(), ""]
    lines += [
        f"- method `{spec.method}`, {spec.num_rounds} tasks: {', '.join(spec.tasks)}",
        f"- orders ({spec.orders.per_trial} per trial): "
        + "; ".join(" > ".join(o) for o in spec.orders.orders),
        f"- search: Optuna TPE ({'multi' if spec.search.multi_objective else 'single'}-objective: {objectives}), "
        f"{spec.search.num_samples} trials, {spec.search.n_startup_trials} random start-up trials, seed {spec.search.seed}",
        f"- early stopping: " + (f"ASHA on rounds (grace {sched.grace_period}, reduction {sched.reduction_factor:g})"
                                 if sched.type == "asha" and spec.num_rounds > 1 else "none"),
        f"- space: " + ", ".join(f"`{d.name}` {d.describe()}" for d in spec.space),
        f"- fixed: " + (", ".join(f"`{k}`={v}" for k, v in sorted(spec.fixed.items())) or "-"),
        f"- per trial: {spec.resources.num_workers} worker(s) x {spec.resources.cpus_per_worker:g} CPU, "
        f"{spec.resources.gpus_per_worker:g} GPU; {spec.search.max_concurrent_trials} trial(s) at once",
        f"- trials: {len(rows)} ({counts['completed']} completed, {counts['stopped']} stopped early, "
        f"{counts['error']} failed, {counts['unfinished']} unfinished); this call took {seconds:.0f} s",
        f"- teacher cache shared by every trial: `{teacher_cache or '-'}`",
        "",
        "Accuracy is the average over the tasks trained so far (final average accuracy after the last round), "
        "in %; generation drop is the base model's generation score minus the final one, in percentage points.",
        "",
        "## Best configuration" + ("s (Pareto set)" if spec.search.multi_objective else ""),
        "",
    ]
    if best:
        lines += _trial_table(best, params, markdown=True)
    else:
        lines.append("No trial completed every round yet.")
    default = next((r for r in rows if r["is_default"]), None)
    lines += ["", "## MoDE default configuration", ""]
    if default is None:
        lines.append("Not evaluated in this sweep (search.include_default: false).")
    else:
        on_front = any(r["trial_id"] == default["trial_id"] for r in front)
        m = default["final"] or default["last"] or {}
        lines.append(f"Trial {default['number']} ({_params_text(default['params'])}): {default['state']}, "
                     f"avg accuracy {_pct(m.get('avg_accuracy'))}%, generation drop {_pct(m.get('generation_drop'))} pp; "
                     + ("on" if on_front else "not on") + " the accuracy / generation-drop Pareto front.")
    lines += ["", "## Pareto front: accuracy against generation drop", "", "![Pareto front](pareto.png)", "",
              "## Every trial", ""]
    lines += _trial_table(rows, params, markdown=True)
    lines += ["", "Files: `trials.csv` and `trials.json` (every trial, per-round metrics), `best.json`, "
              "`pareto.json`, `pareto.png`; each trial's runs under `runs/<sweep>-<trial id>...`. Tune's state "
              "and TensorBoard logs stay on the machine that ran the sweep, not in the store"
              + (f": `{tune['dir']}` on `{tune['host']}` (`tensorboard --logdir {tune['dir']}`)." if tune else "."), ""]
    return "\n".join(lines)


def format_summary(spec: SweepSpec, rows: Sequence[Mapping[str, Any]], uri: str) -> str:
    """Readable end-of-sweep text for the terminal."""
    params = [d.name for d in spec.space] + (["order"] if any("order" in r["params"] for r in rows) else [])
    objectives = [tuple(o) for o in spec.search.objectives]
    best = best_rows(rows, objectives)
    out = [f"sweep {spec.name}: {len(rows)} trials (accuracy in %, generation drop in pp)", *_trial_table(rows, params, markdown=False), ""]
    title = "Pareto set" if len(objectives) > 1 else "best"
    if best:
        out.append(f"{title}: " + "; ".join(f"#{r['number']} {_params_text(r['params'])}" for r in best))
    else:
        out.append(f"{title}: none yet (no trial completed every round)")
    out.append(f"table, best.json, pareto.json, pareto.png, summary.md: {uri}")
    return "\n".join(out)
