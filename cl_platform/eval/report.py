"""The results of a continual-learning run: ``results.json``, the markdown report, plots, terminal table.

``<store>/runs/<run>/results.json`` (schema version 1)::

    {
      "schema_version": 1,
      "run": "<run name>",
      "task_order": ["task_a", "task_b", ...],            # T tasks, in training order
      "config": {...},                                    # the run's full config (any JSON object)
      "methods": {
        "<method>": {
          "accuracy_matrix": [[...T...], ...T rows...],   # R[i][j]: accuracy on task j after round i
          "generation_scores": [...T + 1...],             # base model's score first, then one per round
          "base_accuracy": [...T...],                     # the base model's accuracy on each task
          "ranking_matrix": [[...T...], ...T rows...],    # optional: candidate-ranking accuracy, like
                                                          #   accuracy_matrix; null in a task's column
                                                          #   when it has no closed answer set
          "base_ranking_accuracy": [...T...],             # with ranking_matrix: the base model's (null
                                                          #   where the column is null)
          "metrics": {"avg_accuracy", "avg_forgetting", "bwt", "fwt", "generation_drop",
                      # with ranking_matrix, over the tasks with a closed answer set (null if none):
                      "ranking_avg_accuracy", "ranking_forgetting", "ranking_bwt"},
          "rounds": [{...}, ...]                          # optional per-round details (JSON objects)
        }, ...
      }
    }

Accuracies and generation scores are fractions in ``[0, 1]``; the metrics are those of
:mod:`cl_platform.eval.metrics` and are always recomputed from the arrays (by
:func:`build_results`, and checked against them by :func:`validate_results`). A method entry
without ``ranking_matrix`` (a run recorded before ranking) is valid and has no ranking metrics. Reports show
everything in percent: accuracies and scores as %, forgetting, BWT, FWT and generation drop as
percentage points.

The report (``<run>/report/``): ``report.md`` with the method comparison, the generation scores
across rounds, every method's accuracy matrix and the config, next to the PNG plots it links by
relative path: ``method_comparison.png``, ``generation_scores.png``, one
``accuracy_matrix_<method>.png`` per method and one ``ranking_matrix_<method>.png`` per method
with a ranking matrix (the same heatmap); when rounds hold the gradient-conflict diagnostic
(``rounds[i].gradient_conflict``, :mod:`cl_platform.train.gradients`), a table of it and
``gradient_conflict.png``. Plots are drawn on matplotlib ``Figure`` objects with
the Agg canvas (no pyplot, no display, no global state).
"""

from __future__ import annotations

import io
import json
import math
import numbers
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from cl_platform.eval.metrics import METRIC_NAMES, RANKING_METRIC_NAMES, closed_tasks, ranking_summary, summarize
from cl_platform.store import join

#: Version of the ``results.json`` layout written by this module.
SCHEMA_VERSION = 1
#: File name of the results, directly under the run prefix.
RESULTS_FILE = "results.json"
#: Directory of the report, under the run prefix.
REPORT_DIR = "report"
#: File name of the markdown report inside :data:`REPORT_DIR`.
REPORT_FILE = "report.md"

_TOP_KEYS = ("schema_version", "run", "task_order", "config", "methods")
_METHOD_KEYS = ("accuracy_matrix", "generation_scores", "base_accuracy", "metrics")
_RANKING_KEYS = ("ranking_matrix", "base_ranking_accuracy")
_OPTIONAL_METHOD_KEYS = ("rounds", *_RANKING_KEYS)
_METRIC_TOLERANCE = 1e-9


class ResultsError(ValueError):
    """A results object that does not follow the schema; the message names the offending field."""


class JsonStore(Protocol):
    """What this module needs from a store (:class:`cl_platform.store.Store` has it)."""

    def read_json(self, path: str) -> Any: ...

    def write_json(self, path: str, obj: Any, *, indent: int | None = 2) -> None: ...

    def write_bytes(self, path: str, data: bytes) -> None: ...


# ------------------------------------------------------------------------------------ build


def method_entry(
    accuracy_matrix: ArrayLike,
    generation_scores: ArrayLike,
    base_accuracy: ArrayLike,
    rounds: Sequence[Mapping[str, Any]] | None = None,
    ranking_matrix: Sequence[Sequence[float | None]] | None = None,
    base_ranking_accuracy: Sequence[float | None] | None = None,
) -> dict[str, Any]:
    """One method's entry of ``results["methods"]``, with its metrics computed.

    Arrays become lists of Python floats (``None`` stays ``None`` in the ranking arrays);
    ``rounds`` (if given) is copied through JSON. ``ranking_matrix`` and ``base_ranking_accuracy``
    come together or not at all. Shapes and values are checked by :func:`build_results` /
    :func:`validate_results`.
    """
    if (ranking_matrix is None) != (base_ranking_accuracy is None):
        raise ResultsError("ranking_matrix and base_ranking_accuracy: give both or neither")
    try:
        summary = summarize(accuracy_matrix, generation_scores, base_accuracy)
        ranking = ranking_summary(ranking_matrix) if ranking_matrix is not None else {}
    except ValueError as exc:
        raise ResultsError(str(exc)) from None
    entry: dict[str, Any] = {
        "accuracy_matrix": np.asarray(accuracy_matrix, dtype=np.float64).tolist(),
        "generation_scores": summary["generation_scores"],
        "base_accuracy": np.asarray(base_accuracy, dtype=np.float64).tolist(),
        "metrics": {**{name: summary[name] for name in METRIC_NAMES}, **ranking},
    }
    if ranking_matrix is not None:
        entry["ranking_matrix"] = [_optional_floats(row) for row in ranking_matrix]
        entry["base_ranking_accuracy"] = _optional_floats(base_ranking_accuracy)
    if rounds is not None:
        entry["rounds"] = _json_copy(list(rounds), "rounds")
    return entry


def build_results(
    run: str,
    task_order: Sequence[str],
    config: Mapping[str, Any],
    methods: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """Assemble and validate a ``results.json`` object.

    Args:
        run: the run's name.
        task_order: the ``T`` task names in training order.
        config: the run's full config; must be JSON-serialisable (it is copied through JSON).
        methods: method name -> ``{"accuracy_matrix", "generation_scores", "base_accuracy"}`` and
            optionally ``"rounds"``, in the order the report should list them. Metrics are
            computed here; a ``"metrics"`` key in the input is ignored.

    Returns:
        The results dict (plain lists, floats and dicts), already passed through
        :func:`validate_results`.
    """
    if not isinstance(methods, Mapping) or not methods:
        raise ResultsError("results.methods: need a non-empty mapping of method name -> results")
    built: dict[str, Any] = {}
    for name, given in methods.items():
        where = f"results.methods[{name!r}]"
        if not isinstance(given, Mapping):
            raise ResultsError(f"{where}: expected a mapping, got {type(given).__name__}")
        missing = [k for k in ("accuracy_matrix", "generation_scores", "base_accuracy") if k not in given]
        if missing:
            raise ResultsError(f"{where}: missing {', '.join(missing)}")
        unknown = sorted(set(given) - set(_METHOD_KEYS) - set(_OPTIONAL_METHOD_KEYS))
        if unknown:
            raise ResultsError(f"{where}: unknown keys {unknown}; allowed: {list(_METHOD_KEYS + _OPTIONAL_METHOD_KEYS)}")
        try:
            built[name] = method_entry(
                given["accuracy_matrix"], given["generation_scores"], given["base_accuracy"], given.get("rounds"),
                given.get("ranking_matrix"), given.get("base_ranking_accuracy"),
            )
        except ResultsError as exc:
            raise ResultsError(f"{where}: {exc}") from None
    results = {
        "schema_version": SCHEMA_VERSION,
        "run": run,
        "task_order": list(task_order) if isinstance(task_order, (list, tuple)) else task_order,
        "config": _json_copy(config, "results.config") if isinstance(config, Mapping) else config,
        "methods": built,
    }
    return validate_results(results)


# ------------------------------------------------------------------------------------ validate


def validate_results(results: Any) -> dict[str, Any]:
    """Check ``results`` against schema version 1 and return it; :class:`ResultsError` naming the field.

    Checks: exactly the known keys at the top and per method; ``task_order`` a non-empty list of
    distinct non-empty names (``T`` of them); ``config`` a JSON-serialisable object; per method a
    ``T x T`` accuracy matrix, ``T + 1`` generation scores and ``T`` base accuracies, all numbers
    in ``[0, 1]``; ``metrics`` holding exactly the metrics of :mod:`cl_platform.eval.metrics`,
    each equal to its value recomputed from the arrays; ``rounds`` (optional) a list of objects.
    """
    if not isinstance(results, Mapping):
        raise ResultsError(f"results: expected a JSON object, got {type(results).__name__}")
    missing = [k for k in _TOP_KEYS if k not in results]
    if missing:
        raise ResultsError(f"results: missing {', '.join(missing)}")
    unknown = sorted(set(results) - set(_TOP_KEYS))
    if unknown:
        raise ResultsError(f"results: unknown keys {unknown}; schema version {SCHEMA_VERSION} has {list(_TOP_KEYS)}")

    version = results["schema_version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise ResultsError(f"results.schema_version: expected an integer, got {version!r}")
    if version != SCHEMA_VERSION:
        raise ResultsError(f"results.schema_version: {version} is not supported; this code reads version {SCHEMA_VERSION}")

    run = results["run"]
    if not isinstance(run, str) or not run:
        raise ResultsError(f"results.run: expected a non-empty string, got {run!r}")

    order = results["task_order"]
    if not isinstance(order, (list, tuple)) or not order:
        raise ResultsError(f"results.task_order: expected a non-empty list of task names, got {order!r}")
    for j, name in enumerate(order):
        if not isinstance(name, str) or not name:
            raise ResultsError(f"results.task_order[{j}]: expected a non-empty string, got {name!r}")
    dupes = sorted({n for n in order if list(order).count(n) > 1})
    if dupes:
        raise ResultsError(f"results.task_order: tasks appear more than once: {dupes}")
    T = len(order)

    config = results["config"]
    if not isinstance(config, Mapping):
        raise ResultsError(f"results.config: expected a JSON object, got {type(config).__name__}")
    _check_json(config, "results.config")

    methods = results["methods"]
    if not isinstance(methods, Mapping) or not methods:
        raise ResultsError("results.methods: expected a non-empty object of method name -> results")
    for name, entry in methods.items():
        if not isinstance(name, str) or not name:
            raise ResultsError(f"results.methods: method names must be non-empty strings, got {name!r}")
        _validate_method(entry, T, f"results.methods[{name!r}]")
    return results  # type: ignore[return-value]


def _validate_method(entry: Any, T: int, where: str) -> None:
    if not isinstance(entry, Mapping):
        raise ResultsError(f"{where}: expected a JSON object, got {type(entry).__name__}")
    missing = [k for k in _METHOD_KEYS if k not in entry]
    if missing:
        raise ResultsError(f"{where}: missing {', '.join(missing)}")
    unknown = sorted(set(entry) - set(_METHOD_KEYS) - set(_OPTIONAL_METHOD_KEYS))
    if unknown:
        raise ResultsError(f"{where}: unknown keys {unknown}; allowed: {list(_METHOD_KEYS + _OPTIONAL_METHOD_KEYS)}")

    matrix = entry["accuracy_matrix"]
    if not isinstance(matrix, (list, tuple)) or len(matrix) != T:
        got = f"{len(matrix)} rows" if isinstance(matrix, (list, tuple)) else type(matrix).__name__
        raise ResultsError(f"{where}.accuracy_matrix: expected {T} rows (one per round, T = {T} tasks), got {got}")
    for i, row in enumerate(matrix):
        _check_fractions(row, T, f"{where}.accuracy_matrix[{i}]", f"one per task, T = {T}")
    _check_fractions(entry["generation_scores"], T + 1, f"{where}.generation_scores", f"base first, then one per round: T + 1 = {T + 1}")
    _check_fractions(entry["base_accuracy"], T, f"{where}.base_accuracy", f"the base model's accuracy on each task, T = {T}")

    ranked = [k for k in _RANKING_KEYS if k in entry]
    if len(ranked) == 1:
        raise ResultsError(f"{where}: {ranked[0]} without {[k for k in _RANKING_KEYS if k not in entry][0]}; "
                           "the ranking arrays come together")
    names = METRIC_NAMES + (RANKING_METRIC_NAMES if ranked else ())
    expected = summarize(matrix, entry["generation_scores"], entry["base_accuracy"])
    if ranked:
        expected.update(_validate_ranking(entry, T, where))

    metrics = entry["metrics"]
    if not isinstance(metrics, Mapping):
        raise ResultsError(f"{where}.metrics: expected a JSON object, got {type(metrics).__name__}")
    missing = [k for k in names if k not in metrics]
    unknown = sorted(set(metrics) - set(names))
    if missing or unknown:
        raise ResultsError(f"{where}.metrics: expected exactly {list(names)}; missing {missing}, unknown {unknown}")
    for key in names:
        value = metrics[key]
        if value is None and expected[key] is None:  # a ranking metric without any closed answer set
            continue
        if not _is_number(value) or not math.isfinite(value):
            raise ResultsError(f"{where}.metrics.{key}: expected a finite number, got {value!r}")
        if expected[key] is None or abs(value - expected[key]) > _METRIC_TOLERANCE:
            raise ResultsError(
                f"{where}.metrics.{key}: {value!r} does not match {expected[key]!r} computed from the "
                "accuracy (or ranking) matrix, generation scores and base accuracy"
            )

    if "rounds" in entry:
        rounds = entry["rounds"]
        if not isinstance(rounds, (list, tuple)):
            raise ResultsError(f"{where}.rounds: expected a list of objects, got {type(rounds).__name__}")
        for i, item in enumerate(rounds):
            if not isinstance(item, Mapping):
                raise ResultsError(f"{where}.rounds[{i}]: expected a JSON object, got {type(item).__name__}")
        _check_json(rounds, f"{where}.rounds")


def _validate_ranking(entry: Mapping[str, Any], T: int, where: str) -> dict[str, Any]:
    """Check the ranking arrays; their metrics (:func:`ranking_summary`)."""
    matrix, base = entry["ranking_matrix"], entry["base_ranking_accuracy"]
    if not isinstance(matrix, (list, tuple)) or len(matrix) != T:
        got = f"{len(matrix)} rows" if isinstance(matrix, (list, tuple)) else type(matrix).__name__
        raise ResultsError(f"{where}.ranking_matrix: expected {T} rows (one per round, T = {T} tasks), got {got}")
    for i, row in enumerate(matrix):
        _check_fractions(row, T, f"{where}.ranking_matrix[{i}]", f"one per task or null, T = {T}", optional=True)
    _check_fractions(base, T, f"{where}.base_ranking_accuracy", f"one per task or null, T = {T}", optional=True)
    try:
        closed = set(closed_tasks(matrix))
    except ValueError as exc:
        raise ResultsError(f"{where}.ranking_matrix: {exc}") from None
    for j, v in enumerate(base):
        if (v is None) != (j not in closed):
            raise ResultsError(f"{where}.base_ranking_accuracy[{j}]: {v!r}, but the ranking matrix's column {j} is "
                               + ("numbers" if j in closed else "null") + "; null exactly where the column is null")
    return ranking_summary(matrix)


def _optional_floats(values: Sequence[float | None]) -> list[float | None]:
    return [None if v is None else float(v) for v in values]


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))


def _check_fractions(values: Any, length: int, where: str, meaning: str, *, optional: bool = False) -> None:
    """A list of ``length`` fractions in ``[0, 1]`` (or ``None`` where ``optional``)."""
    if not isinstance(values, (list, tuple)):
        raise ResultsError(f"{where}: expected a list of {length} numbers ({meaning}), got {type(values).__name__}")
    if len(values) != length:
        raise ResultsError(f"{where}: expected {length} values ({meaning}), got {len(values)}")
    for k, v in enumerate(values):
        if optional and v is None:
            continue
        if not _is_number(v):
            raise ResultsError(f"{where}[{k}]: expected a number, got {v!r}")
        if not (0.0 <= v <= 1.0):  # also rejects NaN
            raise ResultsError(f"{where}[{k}]: {v!r} is not a fraction in [0, 1]")


def _check_json(obj: Any, where: str) -> None:
    try:
        json.dumps(obj, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ResultsError(f"{where}: not JSON-serialisable ({exc})") from None


def _json_copy(obj: Any, where: str) -> Any:
    _check_json(obj, where)
    return json.loads(json.dumps(obj, allow_nan=False))


# ------------------------------------------------------------------------------------ store


def results_path(run_prefix: str) -> str:
    """Store path of ``results.json`` under a run prefix (``runs/<run>``)."""
    return join(run_prefix, RESULTS_FILE)


def write_results(store: JsonStore, run_prefix: str, results: Mapping[str, Any]) -> str:
    """Validate ``results`` and write it atomically to ``<run_prefix>/results.json``; returns the path."""
    validate_results(results)
    path = results_path(run_prefix)
    store.write_json(path, results)
    return path


def read_results(store: JsonStore, run_prefix: str) -> dict[str, Any]:
    """Read and validate ``<run_prefix>/results.json`` (``FileNotFoundError`` if absent)."""
    return validate_results(store.read_json(results_path(run_prefix)))


# ------------------------------------------------------------------------------------ formatting


def _pct(x: float) -> str:
    return f"{round(100.0 * x, 1) + 0.0:.1f}"  # + 0.0 turns -0.0 into 0.0


def _pct_or_dash(x: float | None) -> str:
    return "-" if x is None else _pct(x)


def _signed(x: float) -> str:
    return f"{round(100.0 * x, 1) + 0.0:+.1f}"


def _md(text: Any) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _round_labels(order: Sequence[str]) -> list[str]:
    return [f"{i + 1}: {name}" for i, name in enumerate(order)]


def _comparison_rows(results: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for name, entry in results["methods"].items():
        m, g = entry["metrics"], entry["generation_scores"]
        rows.append([
            str(name),
            _pct(m["avg_accuracy"]),
            _pct(m["avg_forgetting"]),
            _signed(m["bwt"]),
            _signed(m["fwt"]),
            f"{_pct(g[0])} -> {_pct(g[-1])}",
            _pct(m["generation_drop"]),
        ])
    return rows


_COMPARISON_HEADER = ["method", "avg accuracy", "avg forgetting", "BWT", "FWT", "generation base -> final", "generation drop"]
_UNITS = "accuracies and generation scores in %; forgetting, BWT, FWT and generation drop in percentage points"


def format_table(results: Mapping[str, Any]) -> str:
    """The fixed-width method comparison printed at the end of a run (no trailing newline)."""
    validate_results(results)
    header = _COMPARISON_HEADER
    rows = _comparison_rows(results)
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [cell.rjust(w) for cell, w in zip(cells[1:], widths[1:])]
        return "  ".join([first, *rest]).rstrip()

    out = [
        f"run {results['run']}: {len(results['task_order'])} tasks in order {', '.join(results['task_order'])}",
        f"({_UNITS})",
        line(header),
        "  ".join("-" * w for w in widths),
        *(line(r) for r in rows),
    ]
    return "\n".join(out)


# ------------------------------------------------------------------------------------ markdown


@dataclass(frozen=True)
class ReportImages:
    """File names of the report's plots, relative to the report directory.

    Attributes:
        comparison: the grouped bar chart comparing methods.
        generation: generation score across rounds, all methods.
        heatmaps: method name -> its accuracy-matrix heatmap.
        ranking_heatmaps: method name -> its ranking-matrix heatmap (methods with a ranking matrix).
    """

    comparison: str = "method_comparison.png"
    generation: str = "generation_scores.png"
    heatmaps: dict[str, str] = field(default_factory=dict)
    ranking_heatmaps: dict[str, str] = field(default_factory=dict)


def report_images(results: Mapping[str, Any]) -> ReportImages:
    """The plot file names for ``results``: fixed names plus one safe, distinct heatmap name per method
    (and per method with a ranking matrix, its ranking heatmap)."""
    heatmaps: dict[str, str] = {}
    ranking: dict[str, str] = {}
    used: set[str] = set()
    for name, entry in results["methods"].items():
        slug = re.sub(r"[^a-z0-9_-]+", "-", str(name).lower()).strip("-") or "method"
        candidate, k = slug, 2
        while candidate in used:
            candidate, k = f"{slug}-{k}", k + 1
        used.add(candidate)
        heatmaps[name] = f"accuracy_matrix_{candidate}.png"
        if "ranking_matrix" in entry:
            ranking[name] = f"ranking_matrix_{candidate}.png"
    return ReportImages(heatmaps=heatmaps, ranking_heatmaps=ranking)


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A markdown table: ``header`` is escaped here, ``rows`` must already be markdown; first column left-aligned."""
    out = ["| " + " | ".join(_md(h) for h in header) + " |"]
    out.append("|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|")
    out.extend("| " + " | ".join(row) + " |" for row in rows)
    return out


def _matrix_table(order: Sequence[str], base: Sequence[float | None], matrix: Sequence[Sequence[float | None]]) -> list[str]:
    """A matrix as a markdown table in % (``-`` for ``None``): the *base* row, then one row per round
    with the cell of the task it trained in bold; a blank line after."""
    body = [["*base*", *(_pct_or_dash(v) for v in base)]]
    for i, label in enumerate(_round_labels(order)):
        cells = [_pct_or_dash(v) for v in matrix[i]]
        cells[i] = f"**{cells[i]}**"
        body.append([_md(label), *cells])
    return [*_md_table(["after round", *order], body), ""]


def render_markdown(results: Mapping[str, Any], images: ReportImages | None = None) -> str:
    """The markdown report: comparison table, generation scores, accuracy (and ranking) matrices, task order, config.

    ``images`` (file names relative to the markdown file, as from :func:`report_images`) adds the
    plots; without it the report has tables only.
    """
    validate_results(results)
    order = list(results["task_order"])
    methods = results["methods"]
    lines: list[str] = [f"# Continual-learning report: {_md(results['run'])}", ""]

    lines += ["## Task order", ""]
    lines += [f"{j + 1}. {_md(name)}" for j, name in enumerate(order)]
    lines += ["", f"Every task is evaluated after every round. Values: {_UNITS}.", ""]

    lines += ["## Method comparison", ""]
    rows = [[_md(r[0]), *r[1:]] for r in _comparison_rows(results)]
    arrow = lambda cells: [c.replace("->", "→") for c in cells]  # noqa: E731
    lines += _md_table(arrow(_COMPARISON_HEADER), [arrow(r) for r in rows])
    lines += [
        "",
        "- **avg accuracy**: mean accuracy over all tasks after the last round.",
        "- **avg forgetting**: mean over tasks before the last of (best accuracy from the round that trained it "
        "up to the round before the last) minus final accuracy (Chaudhry et al. 2018).",
        "- **BWT**: mean over tasks before the last of final accuracy minus accuracy right after training it "
        "(Lopez-Paz and Ranzato 2017); negative means forgetting.",
        "- **FWT**: mean over tasks after the first of the accuracy after the previous round minus the base "
        "model's accuracy (Lopez-Paz and Ranzato 2017).",
        "- **generation drop** (inter-modal forgetting): base model's generation score minus the final one.",
        "",
    ]
    if images is not None:
        lines += [f"![method comparison]({images.comparison})", ""]

    lines += ["## Generation score across rounds", ""]
    gen_header = ["method", "base", *(f"after {label}" for label in _round_labels(order))]
    gen_rows = [[_md(name), *(_pct(g) for g in entry["generation_scores"])] for name, entry in methods.items()]
    lines += _md_table(gen_header, gen_rows)
    lines += [""]
    if images is not None:
        lines += [f"![generation score across rounds]({images.generation})", ""]

    lines += ["## Accuracy matrices", ""]
    lines += [
        "Row *i*, column *j*: accuracy on task *j* after round *i* (bold: the task that round trained). "
        "The *base* row is the model before any round.",
        "",
    ]
    for name, entry in methods.items():
        lines += [f"### {_md(name)}", ""]
        lines += _matrix_table(order, entry["base_accuracy"], entry["accuracy_matrix"])
        if images is not None and name in images.heatmaps:
            lines += [f"![accuracy matrix of {_md(name)}]({images.heatmaps[name]})", ""]

    ranked = {name: entry for name, entry in methods.items() if "ranking_matrix" in entry}
    if ranked:
        lines += ["## Ranking accuracy matrices", ""]
        lines += [
            "Candidate-ranking accuracy: a row counts when, among the task's allowed answers (the distinct "
            "answers of its train and eval splits), the model gives its own answer the highest total "
            "log-likelihood. *-*: the task has too many distinct answers for a closed set; the ranking "
            "metrics are over the tasks that have one.",
            "",
        ]
    for name, entry in ranked.items():
        m = entry["metrics"]
        lines += [f"### {_md(name)}", ""]
        if m["ranking_avg_accuracy"] is not None:
            lines += [f"ranking avg accuracy {_pct(m['ranking_avg_accuracy'])}, ranking forgetting "
                      f"{_pct(m['ranking_forgetting'])}, ranking BWT {_signed(m['ranking_bwt'])}", ""]
        lines += _matrix_table(order, entry["base_ranking_accuracy"], entry["ranking_matrix"])
        if images is not None and name in images.ranking_heatmaps:
            lines += [f"![ranking accuracy matrix of {_md(name)}]({images.ranking_heatmaps[name]})", ""]

    lines += gradient_conflict_section(results, with_plot=images is not None)
    lines += ["## Config", ""]
    text = json.dumps(results["config"], indent=2, ensure_ascii=False)
    fence = "```"
    while fence in text:
        fence += "`"
    lines += [fence + "json", text, fence, ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ plots


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


#: The matrices :func:`plot_accuracy_matrix` draws: results key -> (title, colour-bar label).
MATRIX_PLOTS: dict[str, tuple[str, str]] = {
    "accuracy_matrix": ("accuracy matrix", "accuracy (%)"),
    "ranking_matrix": ("ranking accuracy matrix", "ranking accuracy (%)"),
}


def plot_accuracy_matrix(results: Mapping[str, Any], method: str, matrix: str = "accuracy_matrix") -> bytes:
    """PNG heatmap of ``method``'s accuracy matrix (or another of :data:`MATRIX_PLOTS`, e.g. its
    ``ranking_matrix``): tasks on x, rounds on y, values annotated in % (``-`` and no colour for a
    ``None`` cell).

    The cell of the task each round trained (the diagonal) is outlined.
    """
    validate_results(results)
    if method not in results["methods"]:
        raise KeyError(f"method {method!r} is not in the results; have {list(results['methods'])}")
    if matrix not in MATRIX_PLOTS or matrix not in results["methods"][method]:
        raise KeyError(f"method {method!r} has no {matrix!r} to plot; plots: {list(MATRIX_PLOTS)}")
    title, label = MATRIX_PLOTS[matrix]
    return plot_matrix(results["methods"][method][matrix], list(results["task_order"]), f"{title}: {method}", label)


def plot_matrix(R: ArrayLike, order: Sequence[str], title: str, label: str = "accuracy (%)") -> bytes:
    """PNG heatmap of a ``T x T`` accuracy matrix (fractions; None or NaN: a cell never evaluated or
    without a value, shown as ``-``), tasks on x, rounds on y, values annotated in %, the diagonal
    outlined."""
    order = list(order)
    T = len(order)
    R = 100.0 * np.asarray(R, dtype=np.float64)  # None -> NaN

    fig = Figure(figsize=(max(4.0, 1.6 + 0.9 * T), max(3.2, 1.2 + 0.7 * T)))
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(R), cmap="viridis", vmin=0.0, vmax=100.0, aspect="auto")
    size = max(6, 11 - T // 3)
    for i in range(T):
        for j in range(T):
            ax.text(j, i, "-" if np.isnan(R[i, j]) else f"{R[i, j]:.1f}", ha="center", va="center", fontsize=size,
                    color="black" if np.isnan(R[i, j]) or R[i, j] >= 55.0 else "white")
        ax.add_patch(_cell_outline(i))
    ax.set_xticks(range(T), order, rotation=30 if T > 3 else 0, ha="right" if T > 3 else "center")
    ax.set_yticks(range(T), _round_labels(order))
    ax.set_xlabel("task evaluated")
    ax.set_ylabel("after round")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label=label)
    return _png(fig)


def _cell_outline(i: int) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((i - 0.5, i - 0.5), 1.0, 1.0, fill=False, edgecolor="red", linewidth=1.5)


def plot_generation_scores(results: Mapping[str, Any]) -> bytes:
    """PNG line chart of the generation score (%) after each round, one line per method; round 0 is the base."""
    validate_results(results)
    return plot_score_lines({name: entry["generation_scores"] for name, entry in results["methods"].items()},
                            list(results["task_order"]))


def plot_score_lines(curves: Mapping[str, Sequence[float]], order: Sequence[str]) -> bytes:
    """PNG line chart of generation scores (fractions, base first, then one per task of ``order``),
    one line per entry of ``curves``."""
    order = list(order)
    T = len(order)
    fig = Figure(figsize=(max(5.0, 2.0 + 0.9 * (T + 1)), 3.6))
    ax = fig.add_subplot()
    x = np.arange(T + 1)
    for name, scores in curves.items():
        ax.plot(x, 100.0 * np.asarray(scores, dtype=np.float64), marker="o", label=str(name))
    ax.set_xticks(x, ["0: base", *_round_labels(order)], rotation=30 if T > 3 else 0, ha="right" if T > 3 else "center")
    ax.set_xlabel("after round")
    ax.set_ylabel("generation score (%)")
    ax.set_ylim(-3.0, 103.0)
    ax.grid(True, alpha=0.3)
    ax.set_title("generation score across rounds")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _png(fig)


#: (metric key, label) of the bars in :func:`plot_method_comparison`.
COMPARISON_METRICS: tuple[tuple[str, str], ...] = (
    ("avg_accuracy", "avg accuracy\n(%)"),
    ("avg_forgetting", "avg forgetting\n(points)"),
    ("generation_drop", "generation drop\n(points)"),
)


def plot_method_comparison(results: Mapping[str, Any]) -> bytes:
    """PNG grouped bar chart: avg accuracy, avg forgetting and generation drop, one bar per method."""
    validate_results(results)
    methods = list(results["methods"])
    n = len(methods)
    groups = np.arange(len(COMPARISON_METRICS))
    width = 0.8 / n
    fig = Figure(figsize=(max(5.5, 2.5 + 1.0 * n), 3.8))
    ax = fig.add_subplot()
    for k, name in enumerate(methods):
        metrics = results["methods"][name]["metrics"]
        values = [100.0 * metrics[key] for key, _ in COMPARISON_METRICS]
        bars = ax.bar(groups - 0.4 + width * (k + 0.5), values, width, label=str(name))
        ax.bar_label(bars, labels=[f"{round(v, 1) + 0.0:.1f}" for v in values], fontsize=7, padding=2)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(groups, [label for _, label in COMPARISON_METRICS])
    ax.set_ylabel("percent / percentage points")
    ax.set_title("method comparison")
    ax.margins(y=0.12)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _png(fig)


# ------------------------------------------------------------------------------------ gradient conflict

#: File name of the gradient-conflict plot inside :data:`REPORT_DIR` (written when a round has the diagnostic).
GRADIENT_CONFLICT_PLOT = "gradient_conflict.png"


def gradient_conflicts(results: Mapping[str, Any]) -> dict[str, list[tuple[int, Mapping[str, Any]]]]:
    """Method -> ``(round index, overall statistics)`` of the rounds whose ``rounds[i]`` holds a
    ``gradient_conflict`` (:mod:`cl_platform.train.gradients`); methods without any are left out."""
    out: dict[str, list[tuple[int, Mapping[str, Any]]]] = {}
    for name, entry in results["methods"].items():
        found = [(i, r["gradient_conflict"]["overall"]) for i, r in enumerate(entry.get("rounds") or [])
                 if isinstance(r.get("gradient_conflict"), Mapping) and "overall" in r["gradient_conflict"]]
        if found:
            out[name] = found
    return out


def _num(x: Any, places: int = 3) -> str:
    return "-" if x is None else f"{x:.{places}f}"


def gradient_conflict_section(results: Mapping[str, Any], *, with_plot: bool = False) -> list[str]:
    """Markdown lines of the gradient-conflict table (none when no round has the diagnostic)."""
    found = gradient_conflicts(results)
    if not found:
        return []
    labels = _round_labels(list(results["task_order"]))
    lines = ["## Gradient conflict", "",
             "After each round, on fixed rows: the task loss's and the image-generation loss's gradients on all "
             "adapter parameters. *cosine*: between the two; *task share* / *generation share*: the share of "
             "that loss's squared gradient norm on entries the other loss also updates (- : a zero gradient).", ""]
    rows = [[_md(name), _md(labels[i]), _num(s.get("task_norm"), 4), _num(s.get("generation_norm"), 4),
             _num(s.get("cosine")), _num(s.get("task_share")), _num(s.get("generation_share"))]
            for name, items in found.items() for i, s in items]
    lines += _md_table(["method", "after round", "task |g|", "generation |g|", "cosine", "task share",
                        "generation share"], rows)
    lines += [""]
    if with_plot:
        lines += [f"![gradient conflict across rounds]({GRADIENT_CONFLICT_PLOT})", ""]
    return lines


def plot_gradient_conflict(results: Mapping[str, Any]) -> bytes:
    """PNG of the overall gradient cosine (left) and shared-entry shares (right; solid: task share,
    dashed: generation share) after each round, one colour per method."""
    found = gradient_conflicts(results)
    labels = _round_labels(list(results["task_order"]))
    fig = Figure(figsize=(max(8.0, 3.0 + 1.2 * len(labels)), 3.6))
    cos_ax, share_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    nan = float("nan")
    for k, (name, items) in enumerate(found.items()):
        x = [i for i, _ in items]
        color = f"C{k % 10}"
        cos_ax.plot(x, [nan if s.get("cosine") is None else s["cosine"] for _, s in items], marker="o", color=color,
                    label=str(name))
        for key, style in (("task_share", "-"), ("generation_share", "--")):
            share_ax.plot(x, [nan if s.get(key) is None else s[key] for _, s in items], linestyle=style, marker="o",
                          color=color, label=f"{name}: {key.replace('_', ' ')}")
    for ax, title in ((cos_ax, "cosine(task, generation)"), (share_ax, "share on entries both update")):
        ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 3 else 0,
                      ha="right" if len(labels) > 3 else "center")
        ax.set_xlabel("after round")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    cos_ax.axhline(0.0, color="black", linewidth=0.8)
    cos_ax.set_ylim(-1.05, 1.05)
    share_ax.set_ylim(-0.03, 1.03)
    share_ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=7)
    return _png(fig)


# ------------------------------------------------------------------------------------ report


def write_report(store: JsonStore, run_prefix: str, results: Mapping[str, Any]) -> list[str]:
    """Write ``report.md`` and its PNG plots under ``<run_prefix>/report/``.

    The plots are written first, the markdown last (so it never links a missing image). Returns
    the store paths written, ``report.md`` first.
    """
    validate_results(results)
    directory = join(run_prefix, REPORT_DIR)
    images = report_images(results)
    written: list[str] = []
    plots = [(images.comparison, plot_method_comparison(results)), (images.generation, plot_generation_scores(results))]
    plots += [(images.heatmaps[name], plot_accuracy_matrix(results, name)) for name in results["methods"]]
    if gradient_conflicts(results):
        plots.append((GRADIENT_CONFLICT_PLOT, plot_gradient_conflict(results)))
    plots += [(file_name, plot_accuracy_matrix(results, name, "ranking_matrix"))
              for name, file_name in images.ranking_heatmaps.items()]
    for file_name, data in plots:
        path = join(directory, file_name)
        store.write_bytes(path, data)
        written.append(path)
    report = join(directory, REPORT_FILE)
    store.write_bytes(report, render_markdown(results, images).encode("utf-8"))
    return [report, *written]


__all__ = [
    "COMPARISON_METRICS",
    "GRADIENT_CONFLICT_PLOT",
    "JsonStore",
    "MATRIX_PLOTS",
    "REPORT_DIR",
    "REPORT_FILE",
    "RESULTS_FILE",
    "ReportImages",
    "ResultsError",
    "SCHEMA_VERSION",
    "build_results",
    "format_table",
    "gradient_conflict_section",
    "gradient_conflicts",
    "method_entry",
    "plot_accuracy_matrix",
    "plot_gradient_conflict",
    "plot_generation_scores",
    "plot_matrix",
    "plot_method_comparison",
    "plot_score_lines",
    "read_results",
    "render_markdown",
    "report_images",
    "results_path",
    "validate_results",
    "write_report",
    "write_results",
]
