"""MoDE-official jsonl importer: both task layouts, both stream forms, the probe split, good and bad
lines read back through the validating reader, and the reusable user store of tests.support."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow as pa
import pytest

from cl_platform.data import list_ready_streams, list_ready_tasks, read_stream, read_task
from cl_platform.models.modality import ANOLE
from cl_platform.store import Store
from cl_platform.suites.mode_official import (
    LineSkipped,
    eval_score,
    import_mode_official,
    import_stream_file,
    import_task_file,
    main,
    name_from_path,
    parse_stream_line,
    parse_task_line,
)

SEP, BOI, EOI = ANOLE.sep_id, ANOLE.boi_id, ANOLE.eoi_id
MAX_LEN = 12


def good_line(i: int) -> list[int]:
    """A valid task line: image-ish prompt, separator, a short text answer."""
    return [BOI, 4 + i % 100, 5 + i % 7, EOI, 100 + i, SEP, 200 + i % 13, 300 + i]


# (line content, skip reason or None). Line numbers are positions in this list + 1.
TASK_LINES: list[tuple[str, str | None]] = [
    (json.dumps({"tokens": good_line(0)}), None),
    ('{"tokens": [1, 2, ', "bad_json"),
    (json.dumps({"tokens": [1, 2, 3]}), "no_separator"),
    (json.dumps({"tokens": [1, 70000, SEP, 5]}), "id_out_of_range"),
    (json.dumps({"tokens": list(range(10, 10 + MAX_LEN)) + [SEP, 1]}), "too_long"),
    (json.dumps({"tokens": [1, 2, SEP]}), "empty_answer"),
    ("", None),  # blank: ignored, not reported
    (json.dumps({"toks": [1, SEP, 2]}), "bad_record"),
    (json.dumps({"tokens": [1.5, SEP, 2]}), "bad_record"),
    (json.dumps({"tokens": []}), "empty"),
    (json.dumps({"tokens": [1, -4, SEP, 2]}), "id_out_of_range"),
    (json.dumps({"tokens": [1, True, SEP, 2]}), "bad_record"),
    (json.dumps([1, SEP, 2]), "bad_record"),
    (json.dumps({"tokens": [7, SEP, 8, SEP, 9]}), None),  # answer starts after the FIRST separator
    (json.dumps({"tokens": [1, 2**70, SEP, 2]}), "id_out_of_range"),
    ("\xff not json", "bad_json"),
] + [(json.dumps({"tokens": good_line(i)}), None) for i in range(1, 80)]

STREAM_LINES: list[tuple[str, str | None]] = [
    (json.dumps({"image_tokens": [4, 5, 8195]}), None),
    (json.dumps({"image_tokens": [BOI, 10, 11, EOI]}), None),  # already wrapped: kept as is
    ("{oops", "bad_json"),
    (json.dumps({"image_tokens": [4, EOI, 5]}), "id_out_of_range"),
    (json.dumps({"image_tokens": [BOI, 4, 5]}), "bad_image_span"),  # begin-of-image never closed
    (json.dumps({"image_tokens": [9000, 4]}), "id_out_of_range"),
    (json.dumps({"image_tokens": []}), "empty"),
    (json.dumps({"image_tokens": list(range(4, 4 + MAX_LEN))}), "too_long"),
    (json.dumps({"tokens": [4, 5]}), "bad_record"),
    (json.dumps({"image_tokens": [BOI, EOI]}), "empty"),
    (json.dumps({"image_tokens": list(range(100, 100 + MAX_LEN - 2))}), None),
]


def write_jsonl(path, lines: list[tuple[str, str | None]]) -> None:
    with open(path, "w", encoding="utf-8", errors="surrogateescape") as f:
        for text, _ in lines:
            f.write(text + "\n")


def expected_skips(lines: list[tuple[str, str | None]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for number, (_, reason) in enumerate(lines, start=1):
        if reason:
            out.setdefault(reason, []).append(number)
    return out


@pytest.fixture
def mode_dir(tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    write_jsonl(tasks / "Science QA.jsonl", TASK_LINES)
    write_jsonl(tasks / "tiny.jsonl", [(json.dumps({"tokens": [1, SEP, 2]}), None), (json.dumps({"tokens": [3, SEP, 4]}), None)])
    write_jsonl(tasks / "only_one.jsonl", [(json.dumps({"tokens": [1, SEP, 2]}), None), ("bad", "bad_json")])
    (tasks / "notes.txt").write_text("not a task")
    stream = tmp_path / "gen_images.jsonl"
    write_jsonl(stream, STREAM_LINES)
    return tasks, stream


def test_import_reads_back_through_the_validating_reader(store: Store, mode_dir) -> None:
    tasks_dir, stream_file = mode_dir
    report = import_mode_official(store, tasks_dir=tasks_dir, stream_file=stream_file, max_len=MAX_LEN, rows_per_file=16,
                                  probe_fraction=0)

    # --- the main task
    sq = report.source("science_qa")
    assert sq.ok, sq.error
    good = [json.loads(t)["tokens"] for t, r in TASK_LINES if r is None and t]
    assert sq.lines == len(TASK_LINES) - 1 and sq.blank_lines == 1
    assert sq.rows["train"] + sq.rows["eval"] == len(good)
    expected = expected_skips(TASK_LINES)
    assert {r: sq.skipped_lines(r) for r in expected} == expected
    assert sq.skipped_counts == {r: len(v) for r, v in expected.items()}
    assert sq.num_skipped == sum(len(v) for v in expected.values())
    assert "line" in sq.summary() and "bad_json 2 (lines 2, 16)" in sq.summary()

    task = read_task(store, "science_qa", vocab_size=65536, image_token_ranges=ANOLE.image_token_ranges)
    assert task.spec_id == "anole"
    assert task.manifest["meta"]["source"] == "Science QA.jsonl"
    assert task.manifest["meta"]["skipped"] == sq.skipped_counts
    assert task.train.num_rows == sq.rows["train"] and task.eval.num_rows == sq.rows["eval"]
    assert len(task.files["train"]) == -(-task.train.num_rows // 16)

    # Eval split: exactly the rows whose content hash falls under 5%.
    in_eval = {tuple(t) for t in good if eval_score(pa.array(t).to_numpy()) < 0.05}
    assert 1 <= len(in_eval) < len(good)
    eval_rows = {tuple(p + a) for p, a in zip(task.eval.column("prompt_tokens").to_pylist(), task.eval.column("answer_tokens").to_pylist())}
    train_rows = {tuple(t) for t in task.train.column("tokens").to_pylist()}
    assert eval_rows == in_eval
    assert train_rows == {tuple(t) for t in good} - in_eval

    # Train rows: loss starts right after the first separator; eval prompts end with it.
    for tokens, start in zip(task.train.column("tokens").to_pylist(), task.train.column("answer_start").to_pylist()):
        assert tokens[start - 1] == SEP and SEP not in tokens[: start - 1]
    assert [7, SEP, 8, SEP, 9] in task.train.column("tokens").to_pylist() or (7, SEP, 8, SEP, 9) in eval_rows
    for prompt, answer in zip(task.eval.column("prompt_tokens").to_pylist(), task.eval.column("answer_tokens").to_pylist()):
        assert prompt[-1] == SEP and SEP not in prompt[:-1] and answer

    # --- a two-line task still gets one row on each side
    tiny = read_task(store, "tiny", vocab_size=65536)
    assert tiny.train.num_rows == 1 and tiny.eval.num_rows == 1

    # --- too few valid lines: reported, nothing written
    one = report.source("only_one")
    assert not one.ok and "at least 2 valid lines" in one.error and one.skipped_lines("bad_json") == [2]
    assert not store.exists("tasks/only_one")
    assert not report.ok
    assert list_ready_tasks(store) == ["science_qa", "tiny"]

    # --- the stream
    st = report.source("gen_images")
    assert st.ok and st.kind == "stream"
    assert {r: st.skipped_lines(r) for r in expected_skips(STREAM_LINES)} == expected_skips(STREAM_LINES)
    stream = read_stream(store, "gen_images", vocab_size=65536, image_token_ranges=ANOLE.image_token_ranges)
    assert stream.data.column("tokens").to_pylist() == [
        [BOI, 4, 5, 8195, EOI],
        [BOI, 10, 11, EOI],
        [BOI, *range(100, 100 + MAX_LEN - 2), EOI],
    ]
    assert stream.data.column_names == ["tokens", "prompt_len"]
    assert stream.data.column("prompt_len").to_pylist() == [0, 0, 0]
    assert stream.manifest["meta"]["role"] == "kd" and stream.manifest["meta"]["probe_stream"] is None
    assert st.probe_name is None and set(st.rows) == {"data"}
    assert list_ready_streams(store) == ["gen_images"]  # probe_fraction=0: no probe stream


def test_eval_split_is_deterministic_and_order_independent(tmp_path) -> None:
    lines = [(json.dumps({"tokens": good_line(i)}), None) for i in range(200)]
    write_jsonl(tmp_path / "a.jsonl", lines)
    write_jsonl(tmp_path / "b.jsonl", list(reversed(lines)))
    s1, s2 = Store(str(tmp_path / "s1")), Store(str(tmp_path / "s2"))
    import_task_file(s1, tmp_path / "a.jsonl", name="t")
    import_task_file(s2, tmp_path / "a.jsonl", name="t")
    import_task_file(s2, tmp_path / "b.jsonl", name="rev")
    t1, t2, rev = (read_task(s1, "t"), read_task(s2, "t"), read_task(s2, "rev"))
    assert t1.eval.equals(t2.eval) and t1.train.equals(t2.train)
    assert sorted(rev.eval.column("answer_tokens").to_pylist()) == sorted(t1.eval.column("answer_tokens").to_pylist())
    assert 3 <= t1.eval.num_rows <= 20  # ~5% of 200
    # A larger fraction holds out more.
    import_task_file(s1, tmp_path / "a.jsonl", name="t30", eval_fraction=0.3)
    assert read_task(s1, "t30").eval.num_rows > t1.eval.num_rows


def test_existing_task_is_not_overwritten_without_flag(tmp_path, mode_dir) -> None:
    tasks_dir, _ = mode_dir
    store = Store(str(tmp_path / "s"))
    assert import_task_file(store, tasks_dir / "tiny.jsonl").ok
    again = import_task_file(store, tasks_dir / "tiny.jsonl")
    assert not again.ok and "already exists" in again.error
    assert import_task_file(store, tasks_dir / "tiny.jsonl", overwrite=True).ok


def test_names_from_file_names(tmp_path) -> None:
    assert name_from_path("/x/ScienceQA.jsonl") == "scienceqa"
    assert name_from_path("Text VQA (v2).jsonl") == "text_vqa_v2_"
    assert name_from_path("__imagenet-1k.jsonl") == "imagenet-1k"
    assert len(name_from_path("a" * 100 + ".jsonl")) == 64
    with pytest.raises(ValueError, match="invalid name"):
        name_from_path("___.jsonl")
    # Clashing and unusable names are reported per file; the rest is imported.
    d = tmp_path / "t"
    d.mkdir()
    two = [(json.dumps({"tokens": [1, SEP, 2]}), None), (json.dumps({"tokens": [3, SEP, 4]}), None)]
    for f in ["GQA.jsonl", "gqa.jsonl", "___.jsonl"]:
        write_jsonl(d / f, two)
    report = import_mode_official(Store(str(tmp_path / "s")), tasks_dir=d)
    errors = {os.path.basename(s.source): s.error for s in report.sources}
    assert errors["GQA.jsonl"] is None
    assert "already taken" in errors["gqa.jsonl"]
    assert "invalid name" in errors["___.jsonl"]


def test_line_parsers_directly() -> None:
    tokens, sep = parse_task_line(json.dumps({"tokens": [5, SEP, 6, SEP]}).encode())
    assert tokens.tolist() == [5, SEP, 6, SEP] and sep == 1
    with pytest.raises(LineSkipped) as err:
        parse_task_line(b'{"tokens": [5, 6]}')
    assert err.value.reason == "no_separator" and isinstance(err.value, ValueError)
    tokens, prompt_len = parse_stream_line(b'{"image_tokens": [0, 1]}', image_code_offset=4)
    assert tokens.tolist() == [BOI, 4, 5, EOI] and prompt_len == 0


def test_cli(tmp_path, mode_dir, capsys) -> None:
    tasks_dir, stream_file = mode_dir
    url = f"file://{tmp_path}/cli-store"
    code = main(["--tasks", str(tasks_dir), "--stream", str(stream_file), "--store", url, "--max-len", str(MAX_LEN), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1  # only_one.jsonl could not be imported
    assert {s["name"]: s["error"] is None for s in out["sources"]} == {
        "only_one": False, "science_qa": True, "tiny": True, "gen_images": True
    }
    gen = next(s for s in out["sources"] if s["name"] == "gen_images")
    assert gen["probe_name"] == "gen_images-probe" and gen["rows"]["data"] + gen["rows"]["probe"] == 3
    with pytest.raises(SystemExit):
        main(["--store", url])
    with pytest.raises(SystemExit):
        main(["--tasks", str(tasks_dir), "--eval-fraction", "1.5"])
    with pytest.raises(SystemExit):
        main(["--tasks", str(tasks_dir), "--probe-fraction", "-0.1"])
    with pytest.raises(SystemExit):  # --data-root finds the tasks and the stream itself
        main(["--data-root", str(tasks_dir), "--tasks", str(tasks_dir)])


def test_module_entry_point(tmp_path, mode_dir) -> None:
    tasks_dir, stream_file = mode_dir
    (tasks_dir / "only_one.jsonl").unlink()
    proc = subprocess.run(
        [sys.executable, "-m", "cl_platform.suites.mode_official", "--tasks", str(tasks_dir), "--stream", str(stream_file),
         "--store", str(tmp_path / "m"), "--eval-fraction", "0.1"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "task 'science_qa'" in proc.stdout and "stream 'gen_images'" in proc.stdout
    assert "probe rows in stream 'gen_images-probe'" in proc.stdout
    assert "bad_json 2 (lines 2, 16)" in proc.stdout
    assert list_ready_tasks(Store(str(tmp_path / "m"))) == ["science_qa", "tiny"]


@pytest.mark.parametrize("fraction", [0.0, 0.999999])
def test_both_splits_non_empty_at_extreme_fractions(tmp_path, fraction: float) -> None:
    write_jsonl(tmp_path / "x.jsonl", [(json.dumps({"tokens": good_line(i)}), None) for i in range(5)])
    store = Store(str(tmp_path / "s"))
    report = import_task_file(store, tmp_path / "x.jsonl", eval_fraction=fraction)
    assert report.ok
    task = read_task(store, "x")
    assert task.train.num_rows >= 1 and task.eval.num_rows >= 1
    assert task.train.num_rows + task.eval.num_rows == 5
    assert (task.eval.num_rows == 1) if fraction == 0.0 else (task.train.num_rows == 1)


# ------------------------------------------------------------------------------ reference layout

TEXT = 9000  # text ids of Anole lie above the image codes (4..8195) and the markers
PROMPT = [0, TEXT + 1, TEXT + 2, TEXT + 3]  # bos + text ids


def t2i_line(i: int, n_codes: int = 4) -> list[int]:
    """A whole text-to-image sequence as laion_data.jsonl holds it: [bos, prompt..., boi, codes..., eoi]."""
    return [0, TEXT + i % 50, TEXT + i // 50, BOI, *(4 + (i * 7 + k) % 8192 for k in range(n_codes)), EOI]


def two_task_lines(a: int) -> list[tuple[str, str | None]]:
    return [(json.dumps({"tokens": [0, a, SEP, a + 1, 2]}), None), (json.dumps({"tokens": [0, a + 2, SEP, a + 3, 2]}), None)]


def test_task_folders_and_task_files_coexist(tmp_path, caplog) -> None:
    d = tmp_path / "tasks"
    for folder in ["ScienceQA", "Text.VQA", "GQA"]:
        (d / folder).mkdir(parents=True)
        write_jsonl(d / folder / "train_data.jsonl", two_task_lines(TEXT))
    (d / "empty_folder").mkdir()
    (d / "empty_folder" / "other.jsonl").write_text("")
    write_jsonl(d / "VizWiz.jsonl", two_task_lines(TEXT + 100))
    write_jsonl(d / "gqa.jsonl", two_task_lines(TEXT + 200))  # clashes with the GQA folder
    write_jsonl(d / "laion_data.jsonl", [(json.dumps({"image_tokens": t2i_line(0)}), None)])  # a stream, not a task
    store = Store(str(tmp_path / "s"))
    with caplog.at_level("WARNING"):
        report = import_mode_official(store, tasks_dir=d)

    assert [(s.name, os.path.relpath(s.source, d), s.ok) for s in report.sources] == [
        ("gqa", "GQA/train_data.jsonl", True),
        ("scienceqa", "ScienceQA/train_data.jsonl", True),
        ("text_vqa", "Text.VQA/train_data.jsonl", True),
        ("vizwiz", "VizWiz.jsonl", True),
        ("gqa", "gqa.jsonl", False),
    ]
    assert "already taken by" in report.sources[-1].error and "GQA/train_data.jsonl" in report.sources[-1].error
    assert list_ready_tasks(store) == ["gqa", "scienceqa", "text_vqa", "vizwiz"]
    assert read_task(store, "scienceqa").manifest["meta"]["source"] == "ScienceQA/train_data.jsonl"
    assert read_task(store, "vizwiz").manifest["meta"]["source"] == "VizWiz.jsonl"
    assert len(report.warnings) == 2
    assert any("empty_folder" in w and "without train_data.jsonl" in w for w in report.warnings)
    assert any("laion_data.jsonl" in w and "not a task" in w for w in report.warnings)
    assert "empty_folder" in caplog.text and "warning:" in report.summary()
    assert name_from_path(os.path.join("x", "ScienceQA", "train_data.jsonl")) == "scienceqa"
    assert name_from_path("train_data.jsonl") == "train_data"  # no folder to name it after


@pytest.mark.parametrize("via", ["api", "cli"])
def test_data_root_imports_tasks_and_the_laion_stream(tmp_path, via: str) -> None:
    root = tmp_path / "data"
    for folder, a in [("ScienceQA", TEXT), ("TextVQA", TEXT + 100)]:
        (root / folder).mkdir(parents=True)
        write_jsonl(root / folder / "train_data.jsonl", [(json.dumps({"tokens": [0, a + i, SEP, a + 50, 2]}), None) for i in range(30)])
    write_jsonl(root / "laion_data.jsonl", [(json.dumps({"image_tokens": t2i_line(i)}), None) for i in range(30)])
    url = f"file://{tmp_path}/store"
    if via == "api":
        report = import_mode_official(url, data_root=root).to_dict()
    else:
        assert main(["--data-root", str(root), "--store", url, "--json"]) == 0
    store = Store(url)
    assert list_ready_tasks(store) == ["scienceqa", "textvqa"]
    assert list_ready_streams(store) == ["laion_data", "laion_data-probe"]
    kd, probe = read_stream(store, "laion_data"), read_stream(store, "laion_data-probe")
    assert kd.data.num_rows + probe.data.num_rows == 30 and probe.data.num_rows >= 1
    assert set(kd.data.column("prompt_len").to_pylist()) == {3}
    assert kd.manifest["meta"]["source"] == "laion_data.jsonl" and probe.manifest["meta"]["role"] == "probe"
    if via == "api":
        assert report["ok"] and report["warnings"] == []
        with pytest.raises(ValueError, match="not both"):
            import_mode_official(url, data_root=root, tasks_dir=root)
        with pytest.raises(NotADirectoryError, match="data root"):
            import_mode_official(url, data_root=tmp_path / "missing")
        # Without laion_data.jsonl: the tasks only, and a warning.
        (root / "laion_data.jsonl").unlink()
        again = import_mode_official(Store(str(tmp_path / "s2")), data_root=root)
        assert [s.name for s in again.sources] == ["scienceqa", "textvqa"] and again.ok
        assert again.warnings and "no laion_data.jsonl" in again.warnings[0]


# ------------------------------------------------------------------------------ stream forms

FULL_STREAM_LINES: list[tuple[str, str | None]] = [
    (json.dumps({"image_tokens": t2i_line(1)}), None),  # whole sequence: prompt_len 3
    (json.dumps({"image_tokens": [BOI, 10, 11, EOI]}), None),  # already wrapped: prompt-free
    (json.dumps({"image_tokens": [4, 5, 6]}), None),  # bare codes: wrapped, prompt-free
    (json.dumps({"image_tokens": [0, BOI, 12, EOI]}), None),  # a bos-only prompt: prompt_len 1
    (json.dumps({"image_tokens": [*PROMPT, BOI, 10, 11]}), "bad_image_span"),  # no end-of-image
    (json.dumps({"image_tokens": [*PROMPT, BOI, 10, EOI, TEXT]}), "bad_image_span"),  # text after the image
    (json.dumps({"image_tokens": [*PROMPT, BOI, 10, TEXT, 11, EOI]}), "id_out_of_range"),  # text inside the image
    (json.dumps({"image_tokens": [*PROMPT, BOI, 10, BOI, 11, EOI]}), "id_out_of_range"),  # a second begin-of-image
    (json.dumps({"image_tokens": [0, 70000, BOI, 10, EOI]}), "id_out_of_range"),  # prompt id outside the vocabulary
    (json.dumps({"image_tokens": [*PROMPT, BOI, EOI]}), "empty"),  # no codes
    (json.dumps({"image_tokens": [*PROMPT, 10, 11, EOI]}), "id_out_of_range"),  # no begin-of-image: bare, but text ids
    (json.dumps({"image_tokens": [*PROMPT, BOI, *range(10, 10 + MAX_LEN), EOI]}), "too_long"),
]


def test_stream_forms_bare_codes_and_whole_sequences(tmp_path) -> None:
    write_jsonl(tmp_path / "gen.jsonl", FULL_STREAM_LINES)
    store = Store(str(tmp_path / "s"))
    report = import_stream_file(store, tmp_path / "gen.jsonl", max_len=MAX_LEN, probe_fraction=0)
    assert report.ok, report.error
    assert {r: report.skipped_lines(r) for r in expected_skips(FULL_STREAM_LINES)} == expected_skips(FULL_STREAM_LINES)
    data = read_stream(store, "gen", vocab_size=65536, image_token_ranges=ANOLE.image_token_ranges).data
    assert data.column("tokens").to_pylist() == [t2i_line(1), [BOI, 10, 11, EOI], [BOI, 4, 5, 6, EOI], [0, BOI, 12, EOI]]
    assert data.column("prompt_len").to_pylist() == [3, 0, 0, 1]
    for tokens, plen in zip(data.column("tokens").to_pylist(), data.column("prompt_len").to_pylist()):
        assert tokens[plen] == BOI and BOI not in tokens[:plen]
    # The offset applies to the image codes only, never to the prompt.
    tokens, plen = parse_stream_line(json.dumps({"image_tokens": [*PROMPT, BOI, 0, 8191, EOI]}).encode(), image_code_offset=4)
    assert tokens.tolist() == [*PROMPT, BOI, 4, 8195, EOI] and plen == len(PROMPT)
    with pytest.raises(LineSkipped) as err:
        parse_stream_line(json.dumps({"image_tokens": [*PROMPT, BOI, 5, 6]}).encode())
    assert err.value.reason == "bad_image_span" and "not closed" in err.value.detail


# ------------------------------------------------------------------------------ probe split


def _rows(stream) -> list[tuple[int, ...]]:
    return [tuple(t) for t in stream.data.column("tokens").to_pylist()]


def test_probe_split_is_disjoint_deterministic_and_non_empty(tmp_path) -> None:
    lines = [(json.dumps({"image_tokens": t2i_line(i)}), None) for i in range(200)]
    lines += lines[:10]  # exact duplicates land on the same side
    write_jsonl(tmp_path / "gen.jsonl", lines)
    write_jsonl(tmp_path / "rev.jsonl", list(reversed(lines)))
    s1, s2 = Store(str(tmp_path / "s1")), Store(str(tmp_path / "s2"))
    r1 = import_stream_file(s1, tmp_path / "gen.jsonl", probe_fraction=0.1)
    assert r1.ok and r1.probe_name == "gen-probe" and r1.probe_uri == s1.uri("streams/gen-probe")
    assert import_stream_file(s2, tmp_path / "gen.jsonl", probe_fraction=0.1).ok
    assert import_stream_file(s2, tmp_path / "rev.jsonl", probe_fraction=0.1).ok
    kd, probe = read_stream(s1, "gen"), read_stream(s1, "gen-probe")
    kd_rows, probe_rows = _rows(kd), _rows(probe)
    # Disjoint, complete, and exactly the rows whose content hash is under the fraction.
    assert not set(kd_rows) & set(probe_rows)
    assert sorted(kd_rows + probe_rows) == sorted(tuple(json.loads(t)["image_tokens"]) for t, _ in lines)
    assert set(probe_rows) == {r for r in set(kd_rows) | set(probe_rows) if eval_score(pa.array(r).to_numpy()) < 0.1}
    assert 5 <= len(set(probe_rows)) <= 40 and r1.rows == {"data": len(kd_rows), "probe": len(probe_rows)}
    # Deterministic: the same rows in the same order on a second import, the same sets from reordered lines.
    assert read_stream(s2, "gen").data.equals(kd.data) and read_stream(s2, "gen-probe").data.equals(probe.data)
    assert set(_rows(read_stream(s2, "rev-probe"))) == set(probe_rows)
    assert kd.manifest["meta"]["probe_stream"] == "gen-probe" and probe.manifest["meta"]["kd_stream"] == "gen"
    # Both non-empty whatever the hash says: one row moves across at either extreme.
    for fraction, side in [(1e-12, "probe"), (0.999999, "data")]:
        r = import_stream_file(s1, tmp_path / "gen.jsonl", name="x", probe_fraction=fraction, overwrite=True)
        assert r.ok and r.rows[side] == 1 and sum(r.rows.values()) == len(lines)
    # A probe split needs 2 valid lines; without one a single line is enough.
    write_jsonl(tmp_path / "one.jsonl", lines[:1])
    bad = import_stream_file(s1, tmp_path / "one.jsonl")
    assert not bad.ok and "at least 2 valid lines" in bad.error
    assert not s1.exists("streams/one") and not s1.exists("streams/one-probe")
    assert import_stream_file(s1, tmp_path / "one.jsonl", probe_fraction=0).ok
    # An existing probe stream blocks the import (nothing written) unless overwrite is given.
    s3 = Store(str(tmp_path / "s3"))
    assert import_stream_file(s3, tmp_path / "gen.jsonl", name="gen-probe", probe_fraction=0).ok
    clash = import_stream_file(s3, tmp_path / "gen.jsonl")
    assert not clash.ok and "already exists" in clash.error and list_ready_streams(s3) == ["gen-probe"]
    with pytest.raises(ValueError, match="probe_fraction"):
        import_stream_file(s3, tmp_path / "gen.jsonl", probe_fraction=1.0)
    too_long = import_stream_file(s3, tmp_path / "gen.jsonl", name="g" * 64)
    assert not too_long.ok and "invalid name" in too_long.error


# ------------------------------------------------------------------------------ the reusable user store


def test_build_user_store(tmp_path) -> None:
    from tests.support.user_store import build_user_store

    built = build_user_store(tmp_path)
    store = Store(built["store"])
    assert built["store"] == f"file://{tmp_path}/store" and built["data_root"] == str(tmp_path / "data")
    assert sorted(os.listdir(built["data_root"])) == ["ScienceQA", "TextVQA", "laion_data.jsonl"]
    assert built["tasks"] == ["scienceqa", "textvqa"] == list_ready_tasks(store)
    for name in built["tasks"]:
        task = read_task(store, name, vocab_size=65536)
        assert task.train.num_rows >= 50 and task.eval.num_rows >= 1
    kd = read_stream(store, built["kd_stream"], vocab_size=65536, image_token_ranges=ANOLE.image_token_ranges)
    probe = read_stream(store, built["probe_stream"], vocab_size=65536, image_token_ranges=ANOLE.image_token_ranges)
    assert built["probe_stream"] == built["kd_stream"] + "-probe"
    for stream in (kd, probe):
        assert stream.data.num_rows >= 1 and "prompt_len" in stream.data.column_names
        for tokens, plen in zip(stream.data.column("tokens").to_pylist(), stream.data.column("prompt_len").to_pylist()):
            assert plen > 0 and tokens[0] == 0 and tokens[plen] == BOI and tokens[-1] == EOI
            assert all(t > BOI for t in tokens[1:plen])  # text prompt ids, not image tokens
    assert not set(_rows(kd)) & set(_rows(probe))
    config = store.read_json(f"{built['model']}/config.json")
    assert config["vocab_size"] == 65536 and "modality_spec" not in config
    assert (config["bos_token_id"], config["pad_token_id"], config["eos_token_id"]) == (0, 1, 2)
    assert config["vocabulary_map"]["<racm3:break>"] == BOI and config["vocabulary_map"]["<eoss>"] == EOI
    assert store.exists(f"{built['model']}/model.safetensors")
