"""results.json schema, markdown report, PNG plots and the terminal table."""

import copy
import json

import numpy as np
import pytest
from matplotlib.image import imread

from cl_platform.eval.metrics import METRIC_NAMES, RANKING_METRIC_NAMES, summarize
from cl_platform.eval.report import (
    REPORT_DIR,
    REPORT_FILE,
    SCHEMA_VERSION,
    ResultsError,
    build_results,
    format_table,
    plot_accuracy_matrix,
    read_results,
    render_markdown,
    report_images,
    results_path,
    validate_results,
    write_report,
    write_results,
)
from cl_platform.store import Store

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ORDER = ["add", "sub", "mul"]
CONFIG = {"suite": "digits", "seed": 0, "steps": 120, "method_args": {"mode": {"rank": 8}}, "order": ORDER}
#: A ranking matrix and base ranking accuracies; task "sub" has no closed answer set.
RK = [[0.95, None, 0.5], [0.7, None, 0.6], [0.8, None, 0.9]]
BASE_RK = [0.5, None, 0.3]


def _method(seed: int, drop: float) -> dict:
    rng = np.random.default_rng(seed)
    R = rng.uniform(0.0, 0.3, (3, 3))
    for i in range(3):
        for j in range(i + 1):
            R[i, j] = 0.9 - drop * (i - j)
    return {
        "accuracy_matrix": R,
        "generation_scores": np.linspace(0.8, 0.8 - 3 * drop, 4),
        "base_accuracy": rng.uniform(0.0, 0.2, 3),
        "rounds": [{"task": t, "steps": 120, "seconds": 1.5} for t in ORDER],
    }


@pytest.fixture
def results() -> dict:
    return build_results("demo", ORDER, CONFIG, {"mode": _method(0, 0.02), "seq_lora": _method(1, 0.2)})


def test_build_computes_metrics_and_plain_json(results):
    assert results["schema_version"] == SCHEMA_VERSION == 1
    assert results["task_order"] == ORDER and results["config"] == CONFIG
    assert list(results["methods"]) == ["mode", "seq_lora"]  # insertion order kept
    for entry in results["methods"].values():
        want = summarize(entry["accuracy_matrix"], entry["generation_scores"], entry["base_accuracy"])
        assert entry["metrics"] == {k: want[k] for k in ("avg_accuracy", "avg_forgetting", "bwt", "fwt", "generation_drop")}
        assert isinstance(entry["accuracy_matrix"], list) and isinstance(entry["accuracy_matrix"][0][0], float)
    assert results["methods"]["mode"]["metrics"]["generation_drop"] == pytest.approx(0.06)
    json.dumps(results, allow_nan=False)  # serialisable as is


def test_build_copies_config(results):
    config = {"a": [1, 2]}
    built = build_results("r", ORDER, config, {"m": _method(0, 0.1)})
    config["a"].append(3)
    assert built["config"] == {"a": [1, 2]}


def test_store_round_trip(tmp_path, results):
    store = Store(str(tmp_path))
    path = write_results(store, "runs/demo", results)
    assert path == results_path("runs/demo") == "runs/demo/results.json"
    assert (tmp_path / "runs" / "demo" / "results.json").is_file()
    assert read_results(store, "runs/demo") == results


def test_read_rejects_a_bad_file(tmp_path, results):
    store = Store(str(tmp_path))
    bad = copy.deepcopy(results)
    bad["methods"]["mode"]["metrics"]["bwt"] += 0.1
    store.write_json("runs/demo/results.json", bad)
    with pytest.raises(ResultsError, match=r"methods\['mode'\]\.metrics\.bwt: .* does not match"):
        read_results(store, "runs/demo")
    with pytest.raises(FileNotFoundError):
        read_results(store, "runs/other")


def _set(path, value):
    def mutate(r):
        target = r
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return mutate


def _delete(path):
    def mutate(r):
        target = r
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
    return mutate


@pytest.mark.parametrize(
    "mutate, message",
    [
        (_delete(["run"]), "results: missing run"),
        (_set(["extra"], 1), r"results: unknown keys \['extra'\]"),
        (_set(["schema_version"], 2), "schema_version: 2 is not supported"),
        (_set(["schema_version"], "1"), "schema_version: expected an integer"),
        (_set(["run"], ""), "results.run: expected a non-empty string"),
        (_set(["task_order"], []), "task_order: expected a non-empty list"),
        (_set(["task_order"], ["add", "add", "mul"]), r"tasks appear more than once: \['add'\]"),
        (_set(["task_order", 1], 7), r"task_order\[1\]: expected a non-empty string"),
        (_set(["config"], [1]), "results.config: expected a JSON object"),
        (_set(["config", "x"], float("nan")), "results.config: not JSON-serialisable"),
        (_set(["config", "x"], object()), "results.config: not JSON-serialisable"),
        (_set(["methods"], {}), "results.methods: expected a non-empty object"),
        (_delete(["methods", "mode", "base_accuracy"]), r"methods\['mode'\]: missing base_accuracy"),
        (_set(["methods", "mode", "typo"], 1), r"methods\['mode'\]: unknown keys \['typo'\]"),
        (_set(["methods", "mode", "accuracy_matrix"], [[0.1] * 3] * 2), r"accuracy_matrix: expected 3 rows .*got 2 rows"),
        (_set(["methods", "mode", "accuracy_matrix", 1], [0.1, 0.2]), r"accuracy_matrix\[1\]: expected 3 values"),
        (_set(["methods", "mode", "accuracy_matrix", 2, 0], 1.5), r"accuracy_matrix\[2\]\[0\]: 1.5 is not a fraction in \[0, 1\]"),
        (_set(["methods", "mode", "accuracy_matrix", 0, 0], float("nan")), r"accuracy_matrix\[0\]\[0\]: nan is not a fraction"),
        (_set(["methods", "mode", "accuracy_matrix", 0, 1], "0.5"), r"accuracy_matrix\[0\]\[1\]: expected a number"),
        (_set(["methods", "mode", "accuracy_matrix", 0, 1], True), r"accuracy_matrix\[0\]\[1\]: expected a number"),
        (_set(["methods", "seq_lora", "generation_scores"], [0.5] * 3), r"seq_lora'\]\.generation_scores: expected 4 values .*got 3"),
        (_set(["methods", "mode", "base_accuracy"], [0.1] * 4), r"base_accuracy: expected 3 values .*got 4"),
        (_set(["methods", "mode", "metrics", "fwt"], None), r"metrics\.fwt: expected a finite number"),
        (_delete(["methods", "mode", "metrics", "bwt"]), r"metrics: expected exactly .*missing \['bwt'\]"),
        (_set(["methods", "mode", "metrics", "generation_scores"], []), r"metrics: .*unknown \['generation_scores'\]"),
        (_set(["methods", "mode", "rounds"], {"task": "add"}), r"rounds: expected a list of objects"),
        (_set(["methods", "mode", "rounds", 0], "add"), r"rounds\[0\]: expected a JSON object"),
    ],
)
def test_validation_errors_name_the_field(results, mutate, message):
    _rejected(results, mutate, message)


def _rejected(results, mutate, message):
    """``results`` changed by ``mutate`` fails validation with ``message``."""
    bad = copy.deepcopy(results)
    mutate(bad)
    with pytest.raises(ResultsError, match=message):
        validate_results(bad)


def test_validate_rejects_non_objects():
    with pytest.raises(ResultsError, match="results: expected a JSON object, got list"):
        validate_results([])


def test_rounds_are_optional(results):
    lean = copy.deepcopy(results)
    del lean["methods"]["mode"]["rounds"]
    assert validate_results(lean) is lean


def test_build_errors_name_the_method():
    good = _method(0, 0.1)
    with pytest.raises(ResultsError, match=r"methods\['bad'\]: generation scores G .*expected 4 values, got 2"):
        build_results("r", ORDER, {}, {"ok": good, "bad": {**good, "generation_scores": [0.5, 0.4]}})
    with pytest.raises(ResultsError, match=r"methods\['bad'\]: accuracy matrix R: not square"):
        build_results("r", ORDER, {}, {"bad": {**good, "accuracy_matrix": np.zeros((3, 2))}})
    with pytest.raises(ResultsError, match=r"methods\['bad'\]: missing base_accuracy"):
        build_results("r", ORDER, {}, {"bad": {"accuracy_matrix": good["accuracy_matrix"], "generation_scores": good["generation_scores"]}})
    with pytest.raises(ResultsError, match=r"accuracy_matrix: expected 3 rows"):
        build_results("r", ORDER, {}, {"bad": {**good, "accuracy_matrix": np.full((2, 2), 0.5), "base_accuracy": [0.1, 0.1], "generation_scores": [0.5] * 3}})
    with pytest.raises(ResultsError, match="results.config: not JSON-serialisable"):
        build_results("r", ORDER, {"f": set()}, {"ok": good})


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def test_markdown_has_the_numbers(results):
    md = render_markdown(results)
    for name, entry in results["methods"].items():
        m = entry["metrics"]
        row = next(line for line in md.splitlines() if line.startswith(f"| {name} | "))
        assert _pct(m["avg_accuracy"]) in row and _pct(m["avg_forgetting"]) in row
        assert f"{100 * m['bwt']:+.1f}" in row and f"{100 * m['fwt']:+.1f}" in row
        g = entry["generation_scores"]
        assert f"{_pct(g[0])} → {_pct(g[-1])}" in row and _pct(m["generation_drop"]) in row
        assert f"### {name}" in md
        for i, label in enumerate(["1: add", "2: sub", "3: mul"]):
            cells = [_pct(v) for v in entry["accuracy_matrix"][i]]
            cells[i] = f"**{cells[i]}**"
            assert f"| {label} | " + " | ".join(cells) + " |" in md
    for j, task in enumerate(ORDER):
        assert f"{j + 1}. {task}" in md
    assert json.dumps(CONFIG, indent=2) in md
    assert "![" not in md  # no images unless asked


def test_markdown_escapes_pipes():
    built = build_results("r|1", ORDER, {}, {"a|b": _method(0, 0.1)})
    md = render_markdown(built)
    assert "# Continual-learning report: r\\|1" in md and "| a\\|b | " in md


def test_format_table(results):
    table = format_table(results)
    lines = table.splitlines()
    assert lines[0].startswith("run demo: 3 tasks in order add, sub, mul")
    header, rule, *rows = lines[2:]
    assert header.split()[0] == "method" and set(rule.replace(" ", "")) == {"-"}
    assert [r.split()[0] for r in rows] == ["mode", "seq_lora"]
    assert len({len(r) for r in [header, *rows]}) == 1  # fixed width (all cells right-aligned to the rule)
    mode = results["methods"]["mode"]["metrics"]
    assert _pct(mode["avg_accuracy"]) in rows[0] and _pct(mode["generation_drop"]) in rows[0]


def _check_png(data: bytes, tmp_path, name: str) -> np.ndarray:
    assert data[:8] == PNG_SIGNATURE
    assert 5_000 < len(data) < 2_000_000
    path = tmp_path / name
    path.write_bytes(data)
    img = imread(str(path))
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert 200 < img.shape[0] < 3000 and 300 < img.shape[1] < 3000
    assert img.std() > 0.01  # not blank
    return img


def test_write_report(tmp_path, results):
    store = Store(str(tmp_path / "store"))
    paths = write_report(store, "runs/demo", results)
    report_dir = f"runs/demo/{REPORT_DIR}"
    assert paths[0] == f"{report_dir}/{REPORT_FILE}"
    assert sorted(paths[1:]) == sorted(
        f"{report_dir}/{n}" for n in ["method_comparison.png", "generation_scores.png", "accuracy_matrix_mode.png", "accuracy_matrix_seq_lora.png"]
    )
    assert sorted(store.walk(report_dir)) == sorted(paths)
    md = store.read_bytes(paths[0]).decode("utf-8")
    for path in paths[1:]:
        name = path.rsplit("/", 1)[1]
        assert f"]({name})" in md  # linked relative to report.md
        _check_png(store.read_bytes(path), tmp_path, name)
    assert _pct(results["methods"]["seq_lora"]["metrics"]["avg_accuracy"]) in md


def test_markdown_written_after_the_plots(results):
    class Recorder:
        def __init__(self):
            self.writes = []

        def write_bytes(self, path, data):
            self.writes.append(path)

        def write_json(self, path, obj, *, indent=2):
            self.writes.append(path)

        def read_json(self, path):
            raise FileNotFoundError(path)

    rec = Recorder()
    paths = write_report(rec, "runs/x", results)
    assert rec.writes[-1] == paths[0] == "runs/x/report/report.md"
    assert sorted(rec.writes) == sorted(paths)


def test_heatmap_names_are_safe_and_distinct(tmp_path):
    good = _method(0, 0.1)
    ranked = {**good, "ranking_matrix": RK, "base_ranking_accuracy": BASE_RK}
    built = build_results("r", ORDER, {}, {"MoDE": good, "mode": ranked, "a/b c": good, "../..": good})
    names = report_images(built).heatmaps
    assert names == {
        "MoDE": "accuracy_matrix_mode.png",
        "mode": "accuracy_matrix_mode-2.png",
        "a/b c": "accuracy_matrix_a-b-c.png",
        "../..": "accuracy_matrix_method.png",
    }
    assert report_images(built).ranking_heatmaps == {"mode": "ranking_matrix_mode-2.png"}
    paths = write_report(Store(str(tmp_path)), "runs/r", built)
    assert len(paths) == 1 + 2 + 4 + 1 and "runs/r/report/ranking_matrix_mode-2.png" in paths
    _check_png(Store(str(tmp_path)).read_bytes("runs/r/report/ranking_matrix_mode-2.png"), tmp_path, "rk2.png")


def test_single_task_run_plots(tmp_path):
    built = build_results("one", ["add"], {}, {"m": {"accuracy_matrix": [[0.9]], "generation_scores": [0.8, 0.7], "base_accuracy": [0.1]}})
    assert built["methods"]["m"]["metrics"]["avg_forgetting"] == 0.0
    _check_png(plot_accuracy_matrix(built, "m"), tmp_path, "one.png")
    with pytest.raises(KeyError, match="method 'x' is not in the results"):
        plot_accuracy_matrix(built, "x")


def test_gradient_conflict_table_and_plot(tmp_path):
    def stats(cos):
        return {"overall": {"task_norm": 0.5, "generation_norm": 0.25, "cosine": cos, "task_share": 0.125,
                            "generation_share": None}, "groups": {}}

    mode, seq = _method(0, 0.02), _method(1, 0.2)
    mode["rounds"] = [{**r, "gradient_conflict": stats(c)} for r, c in zip(mode["rounds"], [0.5, -0.25, None])]
    seq["rounds"] = [{**r, "gradient_conflict": None} for r in seq["rounds"]]  # diagnostic off: no rows
    built = build_results("gc", ORDER, {}, {"mode": mode, "seq_lora": seq})
    paths = write_report(Store(str(tmp_path / "store")), "runs/gc", built)
    assert paths[-1].endswith("/gradient_conflict.png")
    _check_png(Store(str(tmp_path / "store")).read_bytes(paths[-1]), tmp_path, "gc.png")
    md = Store(str(tmp_path / "store")).read_bytes(paths[0]).decode()
    section = md.split("## Gradient conflict")[1].split("\n## ")[0]
    table = [line for line in section.splitlines() if line.startswith("| mode |")]
    assert table == ["| mode | 1: add | 0.5000 | 0.2500 | 0.500 | 0.125 | - |",
                     "| mode | 2: sub | 0.5000 | 0.2500 | -0.250 | 0.125 | - |",
                     "| mode | 3: mul | 0.5000 | 0.2500 | - | 0.125 | - |"]
    assert "](gradient_conflict.png)" in md and "| seq_lora | 1" not in md
    assert "Gradient conflict" not in render_markdown(build_results("x", ORDER, {}, {"m": _method(0, 0.1)}))


# ------------------------------------------------------------------------------------ ranking


@pytest.fixture
def ranked() -> dict:
    return build_results("demo", ORDER, CONFIG, {
        "mode": {**_method(0, 0.02), "ranking_matrix": RK, "base_ranking_accuracy": BASE_RK},
        "seq_lora": _method(1, 0.2),  # recorded before ranking: no ranking arrays
    })


def test_build_with_a_ranking_matrix(tmp_path, ranked):
    entry = ranked["methods"]["mode"]
    assert entry["ranking_matrix"] == RK and entry["base_ranking_accuracy"] == BASE_RK
    # over tasks add and mul: (0.8 + 0.9) / 2; add forgot max(0.95, 0.7) - 0.8; BWT 0.8 - 0.95
    assert entry["metrics"]["ranking_avg_accuracy"] == pytest.approx(0.85)
    assert entry["metrics"]["ranking_forgetting"] == pytest.approx(0.15)
    assert entry["metrics"]["ranking_bwt"] == pytest.approx(-0.15)
    assert set(ranked["methods"]["seq_lora"]["metrics"]) == set(METRIC_NAMES)
    store = Store(str(tmp_path))
    write_results(store, "runs/demo", ranked)
    assert read_results(store, "runs/demo") == ranked


def test_no_closed_answer_set_means_null_ranking_metrics():
    none = [[None] * 3] * 3
    built = build_results("r", ORDER, {}, {"m": {**_method(0, 0.1), "ranking_matrix": none,
                                                 "base_ranking_accuracy": [None] * 3}})
    m = built["methods"]["m"]["metrics"]
    assert [m[k] for k in RANKING_METRIC_NAMES] == [None, None, None]
    json.dumps(built, allow_nan=False)
    assert "ranking avg accuracy" not in render_markdown(built)


@pytest.mark.parametrize("mutate, message", [
    (_delete(["methods", "mode", "base_ranking_accuracy"]), r"ranking_matrix without base_ranking_accuracy"),
    (_set(["methods", "mode", "ranking_matrix", 0, 1], 0.5), r"ranking_matrix: .*column 1 mixes None and numbers"),
    (_set(["methods", "mode", "ranking_matrix", 2, 2], 1.2), r"ranking_matrix\[2\]\[2\]: 1.2 is not a fraction"),
    (_set(["methods", "mode", "ranking_matrix"], [[0.5] * 3] * 2), r"ranking_matrix: expected 3 rows"),
    (_set(["methods", "mode", "base_ranking_accuracy", 1], 0.4), r"base_ranking_accuracy\[1\]: 0.4, but .*column 1 is null"),
    (_set(["methods", "mode", "base_ranking_accuracy", 0], None), r"base_ranking_accuracy\[0\]: None, but .*column 0 is numbers"),
    (_set(["methods", "mode", "metrics", "ranking_bwt"], 0.0), r"metrics\.ranking_bwt: 0.0 does not match"),
    (_set(["methods", "mode", "metrics", "ranking_bwt"], None), r"metrics\.ranking_bwt: expected a finite number"),
    (_delete(["methods", "mode", "metrics", "ranking_forgetting"]), r"missing \['ranking_forgetting'\]"),
    (_set(["methods", "seq_lora", "metrics", "ranking_bwt"], 0.0), r"seq_lora'\]\.metrics: .*unknown \['ranking_bwt'\]"),
])
def test_ranking_validation_errors_name_the_field(ranked, mutate, message):
    _rejected(ranked, mutate, message)


def test_ranking_arrays_come_together():
    with pytest.raises(ResultsError, match="give both or neither"):
        build_results("r", ORDER, {}, {"m": {**_method(0, 0.1), "ranking_matrix": RK}})


def test_report_has_the_ranking_tables_and_plots(tmp_path, ranked):
    md = render_markdown(ranked)
    section = md.split("## Ranking accuracy matrices", 1)[1]
    assert "### mode" in section and "### seq_lora" not in section
    assert "ranking avg accuracy 85.0, ranking forgetting 15.0, ranking BWT -15.0" in section
    assert "| *base* | 50.0 | - | 30.0 |" in section
    assert "| 1: add | **95.0** | - | 50.0 |" in section and "| 2: sub | 70.0 | **-** | 60.0 |" in section
    images = report_images(ranked)
    assert images.ranking_heatmaps == {"mode": "ranking_matrix_mode.png"}
    assert "![ranking accuracy matrix of mode](ranking_matrix_mode.png)" in render_markdown(ranked, images)
    _check_png(plot_accuracy_matrix(ranked, "mode", "ranking_matrix"), tmp_path, "rk.png")
    with pytest.raises(KeyError, match="has no 'ranking_matrix'"):
        plot_accuracy_matrix(ranked, "seq_lora", "ranking_matrix")
