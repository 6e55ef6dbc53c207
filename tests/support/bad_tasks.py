"""Bad tasks, as anyone who can write to the store could drop them, for the security tests.

Each :class:`BadKind` breaks a freshly written valid task (``small_task``) in one way and names
the words its quarantine reason must contain. Some cannot be built on every backend (a local file
system refuses a 300-character file name; S3 has no empty directories): ``backends`` says where
one can, ``why_not`` why not elsewhere.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cl_platform.store import Store
from cl_platform.suites.digits.vocab import IMAGE_CODE_LO, PAD_ID
from tests.support.sched_helpers import BAD_KINDS, train_part, write_bad_task

LI32 = pa.list_(pa.int32())
#: Word ids of the digits vocabulary (neither special nor image tokens).
WORD_LO, WORD_HI = 30, 60


@dataclass(frozen=True)
class BadKind:
    """One way to break a task.

    Attributes:
        name: the kind, also the task's name.
        breaker: breaks the freshly written task ``(store, name)``.
        words: what the quarantine reason must contain.
        backends: the store protocols it can be built on.
        why_not: why it cannot be built on the others.
    """

    name: str
    breaker: Callable[[Store, str], None]
    words: tuple[str, ...]
    backends: tuple[str, ...] = ("file", "s3")
    why_not: str = ""

    def build(self, store: Store) -> None:
        """Write the task broken, ``_READY`` last."""
        write_bad_task(store, self.name, self.breaker)


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def put_part(store: Store, name: str, rel: str, table: pa.Table) -> None:
    """Replace a listed part by ``table`` and make the manifest agree (sha256, rows, size), so only
    the content is wrong."""
    data = parquet_bytes(table)
    store.write_bytes(f"tasks/{name}/{rel}", data)
    m = store.read_json(f"tasks/{name}/manifest.json")
    split = rel.split("/")[0]
    m["rows"][split] += table.num_rows - m["files"][rel]["rows"]
    m["files"][rel] = {"sha256": hashlib.sha256(data).hexdigest(), "rows": table.num_rows, "bytes": len(data)}
    store.write_json(f"tasks/{name}/manifest.json", m)


def edit_manifest(store: Store, name: str, fn: Callable[[dict], None]) -> None:
    m = store.read_json(f"tasks/{name}/manifest.json")
    fn(m)
    store.write_json(f"tasks/{name}/manifest.json", m)


def eval_part(store: Store, name: str) -> str:
    return next(p for p in store.walk(f"tasks/{name}/eval") if p.endswith(".parquet")).split(f"tasks/{name}/", 1)[1]


def _train(rows: list[list[int]], starts: list[int]) -> pa.Table:
    return pa.table({"tokens": pa.array(rows, LI32), "answer_start": pa.array(starts, pa.int32())})


def _eval(prompts: list[list[int]], answers: list[list[int]]) -> pa.Table:
    return pa.table({"prompt_tokens": pa.array(prompts, LI32), "answer_tokens": pa.array(answers, LI32)})


# ------------------------------------------------------------------------------------ breakers


def deep_manifest(store: Store, name: str) -> None:
    store.write_bytes(f"tasks/{name}/manifest.json", b"[" * 100_000 + b"]" * 100_000)


def huge_manifest(store: Store, name: str) -> None:
    edit_manifest(store, name, lambda m: m.update(meta={"pad": "x" * (2 * 2**20)}))


def long_file_name(store: Store, name: str) -> None:
    edit_manifest(store, name, lambda m: m["files"].update({"train/" + "p" * 300 + ".parquet": {"sha256": "0" * 64, "rows": 1}}))


def long_file_name_present(store: Store, name: str) -> None:
    """A listed part whose 300-character key really exists (S3 keys may be 1024 bytes long)."""
    rel = "train/" + "p" * 300 + ".parquet"
    data = parquet_bytes(_train([[1, 31, 3, 32, 2]], [3]))
    store.write_bytes(f"tasks/{name}/{rel}", data)
    edit_manifest(store, name, lambda m: (m["files"].update({rel: {"sha256": hashlib.sha256(data).hexdigest(), "rows": 1}}),
                                          m["rows"].update(train=m["rows"]["train"] + 1)))


def part_is_directory(store: Store, name: str) -> None:
    rel = train_part(store, name)
    store.delete(f"tasks/{name}/{rel}")
    store.write_bytes(f"tasks/{name}/{rel}/inner.parquet", b"x")


def backslash_key(store: Store, name: str) -> None:
    """An unlisted object whose key holds a backslash (written through the file system: the store's own writes refuse such keys)."""
    store.fs.pipe_file(store._full(f"tasks/{name}/train") + "/ev\\il.parquet", b"x")


def decompression_bomb(store: Store, name: str) -> None:
    rows, width = 10_000, 2_000  # 80 MB of one id, a few KB on disk
    offsets = pa.array(np.arange(0, (rows + 1) * width, width, dtype=np.int32))
    tokens = pa.ListArray.from_arrays(offsets, pa.array(np.full(rows * width, WORD_LO, np.int32)))
    put_part(store, name, train_part(store, name), pa.table({"tokens": tokens, "answer_start": pa.array(np.ones(rows, np.int32))}))


def long_row(store: Store, name: str) -> None:
    ids = np.random.default_rng(0).integers(WORD_LO, WORD_HI, 200_000).tolist()
    put_part(store, name, train_part(store, name), _train([[1, 30, 3, 31, 2]] * 3 + [ids], [3, 3, 3, 3]))


def extra_binary_column(store: Store, name: str) -> None:
    t = _train([[1, 30, 3, 31, 2]] * 2, [3, 3]).append_column("blob", pa.array([b"\0" * (5 * 2**20)] * 2, pa.binary()))
    put_part(store, name, train_part(store, name), t)


def image_answer(store: Store, name: str) -> None:
    put_part(store, name, eval_part(store, name), _eval([[1, 40, 3]] * 2, [[IMAGE_CODE_LO, IMAGE_CODE_LO + 1]] * 2))


def padding_prompt(store: Store, name: str) -> None:
    put_part(store, name, eval_part(store, name), _eval([[PAD_ID] * 3, [1, 40, 3]], [[41, 2], [41, 2]]))


def eval_is_train(store: Store, name: str) -> None:
    put_part(store, name, eval_part(store, name), _eval([[1, 30, 3]] * 2, [[31, 2]] * 2))


def bytes_mismatch(store: Store, name: str) -> None:
    rel = train_part(store, name)
    edit_manifest(store, name, lambda m: m["files"][rel].update(bytes=m["files"][rel]["bytes"] + 1))


def too_many_files(store: Store, name: str) -> None:
    """1000 unlisted objects (written in one batch, straight through the file system)."""
    root = store._full(f"tasks/{name}/extra")
    store.fs.pipe({f"{root}/{i:04d}.txt": b"x" for i in range(1000)})


def too_many_listed_files(store: Store, name: str) -> None:
    edit_manifest(store, name, lambda m: m["files"].update(
        {f"train/x-{i:04d}.parquet": {"sha256": "0" * 64, "rows": 0} for i in range(1001)}))


def too_many_rows(store: Store, name: str) -> None:
    edit_manifest(store, name, lambda m: m["rows"].update(train=6_000_000))


def escaping_path(store: Store, name: str) -> None:
    edit_manifest(store, name, lambda m: m["files"].update({"train/../../../x.parquet": {"sha256": "0" * 64, "rows": 1}}))


def manifest_not_object(store: Store, name: str) -> None:
    store.write_bytes(f"tasks/{name}/manifest.json", json.dumps([1, 2]).encode())


def manifest_other_name(store: Store, name: str) -> None:
    edit_manifest(store, name, lambda m: m.update(name="someone-else"))


def answer_start_past_end(store: Store, name: str) -> None:
    put_part(store, name, train_part(store, name), _train([[1, 30, 3, 31, 2], [1, 30, 3]], [3, 9]))


def empty_answer(store: Store, name: str) -> None:
    put_part(store, name, eval_part(store, name), _eval([[1, 40, 3]] * 2, [[41, 2], []]))


def missing_part(store: Store, name: str) -> None:
    store.delete(f"tasks/{name}/{train_part(store, name)}")


NO_LONG_NAMES = "a local file system refuses file names over 255 bytes"

#: Every kind of bad task of the security tests: the scheduler helpers' seven, then these.
KINDS: list[BadKind] = [BadKind(n, b, tuple(w)) for n, b, w in BAD_KINDS] + [
    BadKind("deep-manifest", deep_manifest, ("manifest.json", "nested 100000 levels deep", "max_manifest_depth")),
    BadKind("huge-manifest", huge_manifest, ("manifest.json", "max_manifest_bytes")),
    BadKind("long-file-name", long_file_name, ("manifest.json", "a file name of 308 characters")),
    BadKind("long-file-name-present", long_file_name_present, ("manifest.json", "a file name of 308 characters"),
            backends=("s3",), why_not=NO_LONG_NAMES),
    BadKind("part-is-directory", part_is_directory, ("train/part-00000.parquet", "is a directory, not a file")),
    BadKind("backslash-key", backslash_key, ("not a valid store path", "backslash")),
    BadKind("decompression-bomb", decompression_bomb, ("train/part-00000.parquet", "decodes to", "refused before decoding")),
    BadKind("long-row", long_row, ("train/part-00000.parquet", "row 3: 200000 tokens", "max_tokens")),
    BadKind("extra-binary-column", extra_binary_column, ("unknown column(s) ['blob']",)),
    BadKind("image-answer", image_answer, ("eval/part-00000.parquet", "image token", "answers of a task are text")),
    BadKind("padding-prompt", padding_prompt, ("eval/part-00000.parquet", "only padding", f"pad id {PAD_ID}")),
    BadKind("eval-is-train", eval_is_train, ("eval/part-00000.parquet", "duplicates a train row")),
    BadKind("bytes-mismatch", bytes_mismatch, ("train/part-00000.parquet", "size mismatch")),
    BadKind("too-many-files", too_many_files, ("holds 1004 files", "max_files")),
    BadKind("too-many-listed-files", too_many_listed_files, ("manifest.json", "lists 1003 files", "max_files")),
    BadKind("too-many-rows", too_many_rows, ("manifest.json", "max_rows")),
    BadKind("escaping-path", escaping_path, ("manifest.json", "'..'")),
    BadKind("manifest-not-object", manifest_not_object, ("manifest.json", "must be a JSON object")),
    BadKind("manifest-other-name", manifest_other_name, ("manifest.json", "someone-else")),
    BadKind("answer-start-past-end", answer_start_past_end, ("train/part-00000.parquet", "answer_start 9")),
    BadKind("empty-answer", empty_answer, ("eval/part-00000.parquet", "'answer_tokens' is empty")),
    BadKind("missing-part", missing_part, ("train/part-00000.parquet", "missing from the store")),
]


def kinds_for(protocol: str) -> list[BadKind]:
    """The kinds that can be built on a store of ``protocol`` (``"file"`` or ``"s3"``)."""
    return [k for k in KINDS if protocol in k.backends]


__all__ = ["KINDS", "BadKind", "kinds_for", "put_part"]
