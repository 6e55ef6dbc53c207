"""Write the digits suite into a store: five tasks, two streams, the tokenizer, the judge, ``suite.json``.

Store layout it produces (``<prefix>`` is empty by default)::

    tasks/<prefix>parity ... tasks/<prefix>pair       the five tasks (task format, docs/architecture.md)
    streams/<prefix>kd, streams/<prefix>probe         the KD stream and the generation probe
    suites/digits/tokenizer/                          tokenizer.json, tokenizer_config.json, special_tokens_map.json
    suites/digits/judge.safetensors                   the DigitsJudge: arrays + its settings as JSON
    suites/digits/judge.json                          its seed, sha256, settings and accuracy report
    suites/digits/suite.json                          written last: sizes, task order, names, split

Idempotent: an artifact already present and valid (it validates, and it holds exactly what this
seed produces) is skipped; one present but different (another seed, an older build) raises
:class:`SuiteConflictError` unless ``overwrite=True``; an interrupted write (no ``_READY``) is
replaced. Every dataset manifest's ``meta`` carries a content fingerprint of its tables.

Nothing executable is read back from the store: the judge is numbers
(:meth:`~cl_platform.suites.digits.judge.ImageJudge.from_bytes`), and ``suites/digits/judge.pkl``, the
pickled judge older versions wrote, counts as absent: a new judge is written next to it and the
pickle is never opened (a sha256 beside it in the same bucket would prove nothing).
"""

from __future__ import annotations

import hashlib
import json
from typing import Callable

import pyarrow as pa

from cl_platform.data import TaskValidationError, read_stream, read_task, write_stream, write_task
from cl_platform.store import Store, as_store
from cl_platform.suites.digits import vocab as V
from cl_platform.suites.digits.tasks import DigitsSuite, build_suite

SUITE_DIR = "suites/digits"
SUITE_JSON = f"{SUITE_DIR}/suite.json"
JUDGE_FILE = f"{SUITE_DIR}/judge.safetensors"
JUDGE_JSON = f"{SUITE_DIR}/judge.json"
#: The pickled judge of older versions: never read (see the module docstring).
LEGACY_JUDGE_PKL = f"{SUITE_DIR}/judge.pkl"
TOKENIZER_DIR = f"{SUITE_DIR}/tokenizer"


class SuiteConflictError(RuntimeError):
    """The store already holds an artifact of this name with different content."""


def table_fingerprint(*tables: pa.Table) -> str:
    """sha256 of the tables' content (Arrow IPC stream of each, in order)."""
    h = hashlib.sha256()
    for t in tables:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, t.schema) as w:
            w.write_table(t.combine_chunks())
        h.update(sink.getvalue().to_pybytes())
    return h.hexdigest()


def _status(store: Store, kind: str, name: str, fingerprint: str) -> str:
    """``"absent"`` (nothing or an interrupted write), ``"same"`` or ``"different"``."""
    root = f"{kind}s/{name}"
    if not store.exists(root):
        return "absent"
    reader = read_task if kind == "task" else read_stream
    try:
        ds = reader(store, name, vocab_size=V.VOCAB_SIZE, image_token_ranges=V.DIGITS_SPEC.image_token_ranges)
    except TaskValidationError as exc:
        if exc.file == "_READY":
            return "absent"  # still landing or interrupted: the writer replaces it
        return "different"
    meta = ds.manifest.get("meta") or {}
    if ds.spec_id == V.DIGITS_SPEC.spec_id and meta.get("fingerprint") == fingerprint:
        return "same"
    return "different"


def write_suite(
    store: Store | str | None,
    seed: int = 0,
    *,
    prefix: str = "",
    overwrite: bool = False,
    suite: DigitsSuite | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Write the digits suite for ``seed`` into ``store``; returns the ``suite.json`` content.

    Args:
        store: the store or its URL.
        seed: the suite seed (split, rows, streams, judge negatives).
        prefix: prepended to every task and stream name (``"digits-"`` -> ``tasks/digits-parity``).
        overwrite: replace artifacts that exist with different content instead of raising.
        suite: a pre-built suite for ``seed`` (built here when ``None``).
        log: receives one line per artifact (written / skipped).
    """
    from cl_platform.suites.digits.judge import DigitsJudge, train_digits_judge

    store = as_store(store)
    suite = suite if suite is not None else build_suite(seed)
    if suite.seed != int(seed):
        raise ValueError(f"write_suite: suite was built with seed {suite.seed}, asked for seed {seed}")
    spec = suite.spec

    def conflict(what: str) -> None:
        if not overwrite:
            raise SuiteConflictError(
                f"{store.uri(what)} already exists with different content (another seed or an older build of the "
                f"digits suite); pass overwrite=True (--overwrite) to replace it"
            )

    # -- tokenizer
    files = V.tokenizer_files()
    tok_state = _tokenizer_status(store, files)
    if tok_state == "same":
        log(f"skip   {TOKENIZER_DIR} (present)")
    else:
        if tok_state == "different":
            conflict(TOKENIZER_DIR)
        for fname, text in files.items():
            store.write_bytes(f"{TOKENIZER_DIR}/{fname}", text.encode("utf-8"))
        log(f"write  {TOKENIZER_DIR}")

    # -- judge
    judge_info = _read_json(store, JUDGE_JSON)
    judge_ok = False
    if judge_info is not None and store.exists(JUDGE_FILE):
        data = store.read_bytes(JUDGE_FILE)
        if judge_info.get("seed") == suite.seed and judge_info.get("sha256") == hashlib.sha256(data).hexdigest():
            try:
                DigitsJudge.from_bytes(data)
                judge_ok = True
            except ValueError:
                pass
    if store.exists(LEGACY_JUDGE_PKL):
        log(f"ignore {LEGACY_JUDGE_PKL} (a pickled judge of an older version: never loaded)")
    if judge_ok:
        log(f"skip   {JUDGE_FILE} (present, seed {suite.seed}, accuracy {judge_info['report']['accuracy']:.3f})")
    else:
        if judge_info is not None and judge_info.get("seed") not in (None, suite.seed):
            conflict(JUDGE_FILE)
        judge, report = train_digits_judge(suite.seed)
        if report.accuracy < 0.95:
            raise RuntimeError(f"write_suite: the digits judge reached only {report.accuracy:.3f} held-out accuracy (< 0.95)")
        data = judge.to_bytes()
        store.write_bytes(JUDGE_FILE, data)
        judge_info = {"class": "DigitsJudge", "file": JUDGE_FILE, "seed": suite.seed,
                      "sha256": hashlib.sha256(data).hexdigest(), "settings": judge.settings(), "report": report.to_dict()}
        store.write_json(JUDGE_JSON, judge_info)
        log(f"write  {JUDGE_FILE} (held-out accuracy {report.accuracy:.3f}, not-a-digit recall {report.not_a_digit_recall:.3f})")

    # -- streams and tasks
    common_meta = {"suite": "digits", "seed": suite.seed}
    names: dict[str, dict[str, str]] = {"tasks": {}, "streams": {}}
    for sname, table in suite.streams.items():
        name = f"{prefix}{sname}"
        names["streams"][sname] = name
        fp = table_fingerprint(table)
        state = _status(store, "stream", name, fp)
        if state == "same":
            log(f"skip   streams/{name} (present)")
            continue
        if state == "different":
            conflict(f"streams/{name}")
        write_stream(
            store, name, table, spec_id=spec.spec_id, vocab_size=spec.vocab_size, overwrite=True,
            meta={**common_meta, "stream": sname, "fingerprint": fp},
        )
        log(f"write  streams/{name} ({table.num_rows} rows)")
    for tname in suite.task_order:
        task = suite.tasks[tname]
        name = f"{prefix}{tname}"
        names["tasks"][tname] = name
        fp = table_fingerprint(task.train, task.eval)
        state = _status(store, "task", name, fp)
        if state == "same":
            log(f"skip   tasks/{name} (present)")
            continue
        if state == "different":
            conflict(f"tasks/{name}")
        write_task(
            store, name, task.train, task.eval, spec_id=spec.spec_id, vocab_size=spec.vocab_size, overwrite=True,
            meta={**common_meta, "task": tname, "description": task.description,
                  "answer_vocab": list(task.answer_vocab), "fingerprint": fp},
        )
        log(f"write  tasks/{name} ({task.train.num_rows} train, {task.eval.num_rows} eval rows)")

    # -- suite.json, last
    desc = suite.describe()
    desc["names"] = names
    desc["task_order_names"] = [names["tasks"][t] for t in suite.task_order]
    desc["artifacts"] = {"tokenizer": TOKENIZER_DIR, "judge": JUDGE_FILE, "judge_info": JUDGE_JSON}
    desc["judge"] = judge_info["report"]
    existing = _read_json(store, SUITE_JSON)
    if existing == desc:
        log(f"skip   {SUITE_JSON} (present)")
    else:
        if existing is not None and existing.get("seed") != suite.seed:
            conflict(SUITE_JSON)
        store.write_json(SUITE_JSON, desc)
        log(f"write  {SUITE_JSON}")
    return desc


def read_suite_info(store: Store | str | None) -> dict:
    """The ``suite.json`` a previous :func:`write_suite` left in ``store`` (FileNotFoundError if none)."""
    return as_store(store).read_json(SUITE_JSON)


def load_judge(store: Store | str | None, path: str = JUDGE_FILE):
    """The judge stored by :func:`write_suite` (an :class:`~cl_platform.suites.digits.judge.ImageJudge`).

    Raises:
        FileNotFoundError: no judge at ``path`` (a store written by an older version holds only
            the pickled ``judge.pkl``, which is never loaded).
        ValueError: the file is not a judge (a pickle among them), naming it.
    """
    from cl_platform.suites.digits.judge import ImageJudge

    store = as_store(store)
    if not store.exists(path):
        raise FileNotFoundError(
            f"no digits judge at {store.uri(path)}" + (
                f" (the store holds only {LEGACY_JUDGE_PKL}, a pickled judge of an older version, which is never "
                "loaded)" if store.exists(LEGACY_JUDGE_PKL) else "")
            + f"; write it with: python -m cl_platform.suites.digits --store {store.url}")
    try:
        return ImageJudge.from_bytes(store.read_bytes(path))
    except ValueError as exc:
        raise ValueError(f"{store.uri(path)}: {exc}") from None


def _read_json(store: Store, path: str) -> dict | None:
    if not store.exists(path):
        return None
    try:
        obj = store.read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def _tokenizer_status(store: Store, files: dict[str, str]) -> str:
    """Compare the stored tokenizer by meaning (vocabulary, specials, config), not bytes."""
    present = [f for f in files if store.exists(f"{TOKENIZER_DIR}/{f}")]
    if not present:
        return "absent"
    if len(present) != len(files):
        return "different"
    try:
        from tokenizers import Tokenizer

        stored = Tokenizer.from_str(store.read_bytes(f"{TOKENIZER_DIR}/tokenizer.json").decode("utf-8"))
        same_vocab = stored.get_vocab(with_added_tokens=True) == V.TOKEN_TO_ID
        same_cfg = all(
            json.loads(store.read_bytes(f"{TOKENIZER_DIR}/{f}").decode("utf-8")) == json.loads(files[f])
            for f in files if f.endswith(".json") and f != "tokenizer.json"
        )
    except Exception:  # noqa: BLE001 - anything unreadable counts as different
        return "different"
    return "same" if same_vocab and same_cfg else "different"


__all__ = ["write_suite", "read_suite_info", "load_judge", "table_fingerprint", "SuiteConflictError",
           "SUITE_JSON", "JUDGE_FILE", "LEGACY_JUDGE_PKL", "JUDGE_JSON", "TOKENIZER_DIR"]
