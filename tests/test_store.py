"""The artifact store on both backends (local directory and moto S3)."""

from __future__ import annotations

import json
import os
import pickle
import threading
import time

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from cl_platform.store import TMP_PREFIX, Store, as_store, check_path, default_store_url


def test_bytes_json_parquet_round_trip(store: Store) -> None:
    store.write_bytes("a/b/c.bin", b"\x00\x01hello")
    assert store.read_bytes("a/b/c.bin") == b"\x00\x01hello"

    obj = {"x": [1, 2, 3], "name": "ünïcode", "nested": {"ok": True, "none": None}}
    store.write_json("a/meta.json", obj)
    assert store.read_json("a/meta.json") == obj

    table = pa.table({"tokens": pa.array([[1, 2], [3]], pa.list_(pa.int32())), "n": pa.array([7, 8], pa.int32())})
    store.write_parquet("a/t.parquet", table)
    back = store.read_parquet("a/t.parquet")
    assert back.equals(table)
    assert back.schema == table.schema
    assert store.read_parquet("a/t.parquet", columns=["n"]).column_names == ["n"]

    # Overwrite replaces the whole object.
    store.write_bytes("a/b/c.bin", b"second")
    assert store.read_bytes("a/b/c.bin") == b"second"


def test_missing_objects_raise_file_not_found_naming_the_uri(store: Store) -> None:
    with pytest.raises(FileNotFoundError, match="nope.json"):
        store.read_bytes("nope.json")
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        store.read_parquet("nope.parquet")
    with pytest.raises(FileNotFoundError, match="nope"):
        store.info("nope")


def test_list_exists_walk_glob_delete(store: Store) -> None:
    for path in ["tasks/b/_READY", "tasks/a/_READY", "tasks/a/train/part-00000.parquet", "tasks/c/x", "top.txt"]:
        store.write_bytes(path, b"1")
    assert store.list() == ["tasks", "top.txt"]
    assert store.list("tasks") == ["a", "b", "c"]
    assert store.list("tasks/a") == ["_READY", "train"]
    assert store.list("missing/prefix") == []
    with pytest.raises(NotADirectoryError):
        store.list("top.txt")

    assert store.exists("tasks/a/_READY")
    assert store.exists("tasks/a")
    assert not store.exists("tasks/zz")
    assert store.is_dir("tasks/a") and not store.is_dir("tasks/a/_READY")

    assert store.walk("tasks/a") == ["tasks/a/_READY", "tasks/a/train/part-00000.parquet"]
    assert store.walk("nothing") == []
    assert store.glob("tasks/*/_READY") == ["tasks/a/_READY", "tasks/b/_READY"]

    store.delete("tasks/b/_READY")
    assert not store.exists("tasks/b/_READY")
    with pytest.raises(FileNotFoundError):
        store.delete("tasks/b/_READY")
    store.delete("tasks/b/_READY", missing_ok=True)
    with pytest.raises(IsADirectoryError):
        store.delete("tasks/a")
    store.delete("tasks/a", recursive=True)
    assert store.list("tasks") == ["c"]


def test_info_and_mtime(store: Store) -> None:
    before = time.time()
    store.write_bytes("m/one", b"12345")
    info = store.info("m/one")
    assert info.size == 5 and not info.is_dir and info.path == "m/one"
    # S3 LastModified has one-second resolution.
    assert before - 2 <= store.mtime("m/one") <= time.time() + 2
    assert store.info("m").is_dir


def test_put_dir_get_dir(store: Store, tmp_path) -> None:
    src = tmp_path / "model"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "config.json").write_text('{"a": 1}')
    (src / "sub" / "weights.bin").write_bytes(os.urandom(3000))
    (src / "sub" / "deeper" / "x.txt").write_text("x")
    written = store.put_dir(src, "models/m1")
    assert written == ["models/m1/config.json", "models/m1/sub/deeper/x.txt", "models/m1/sub/weights.bin"]
    assert store.walk("models/m1") == sorted(written)

    dst = tmp_path / "back"
    store.get_dir("models/m1", dst)
    for rel in ["config.json", "sub/weights.bin", "sub/deeper/x.txt"]:
        assert (dst / rel).read_bytes() == (src / rel).read_bytes()
    with pytest.raises(FileNotFoundError):
        store.get_dir("models/none", tmp_path / "none")


def test_conditional_create(store: Store) -> None:
    assert store.write_bytes_if_absent("leases/x", b"first") is True
    assert store.write_bytes_if_absent("leases/x", b"second") is False
    assert store.read_bytes("leases/x") == b"first"
    assert store.list("leases") == ["x"]  # no temp files left behind


def test_conditional_create_has_exactly_one_winner_under_contention(store: Store) -> None:
    results: list[bool] = []
    lock = threading.Lock()
    barrier = threading.Barrier(6)

    def attempt(i: int) -> None:
        barrier.wait()
        won = store.write_bytes_if_absent("leases/race", f"owner-{i}".encode())
        with lock:
            results.append(won)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 5 + [True]
    assert store.read_bytes("leases/race").startswith(b"owner-")


@pytest.mark.parametrize(
    "bad",
    ["", "/abs/path", "a//b", "a/../b", "..", "./a", "a/", "a\\b", "tasks/x/.."],
)
def test_bad_paths_are_rejected_with_the_path_named(store: Store, bad: str) -> None:
    with pytest.raises(ValueError) as err:
        store.write_bytes(bad, b"x")
    assert repr(bad) in str(err.value)
    with pytest.raises(ValueError):
        check_path(bad)


def test_root_listing_allowed_but_root_write_is_not(store: Store) -> None:
    assert store.list("") == []
    with pytest.raises(ValueError, match="empty path"):
        store.read_bytes("")


def test_uri_and_pyarrow_filesystem(store: Store) -> None:
    store.write_bytes("d/x.bin", b"abc")
    fs, root = store.pyarrow_filesystem()
    assert "://" not in root
    if store.is_local:
        assert store.uri("d/x.bin").startswith("file:///")
        assert isinstance(fs, pafs.LocalFileSystem)
    else:
        assert store.uri("d/x.bin").startswith("s3://")
        assert isinstance(fs, pafs.S3FileSystem)
    assert store.uri("d/x.bin").endswith(root + "/d/x.bin")
    with fs.open_input_stream(f"{root}/d/x.bin") as f:
        assert f.read() == b"abc"


def test_store_pickles_and_keeps_working(store: Store) -> None:
    store.write_bytes("p", b"1")
    clone = pickle.loads(pickle.dumps(store))
    assert clone == store
    assert clone.read_bytes("p") == b"1"


def test_sub_store(store: Store) -> None:
    sub = store.sub("runs/r1")
    sub.write_json("ledger.json", {"ok": 1})
    assert store.read_json("runs/r1/ledger.json") == {"ok": 1}
    assert sub.uri("ledger.json") == store.uri("runs/r1/ledger.json")


def test_concurrent_reader_never_sees_a_partial_json(store: Store) -> None:
    """A writer replaces a large JSON repeatedly; a reader parses it the whole time."""
    big = {"rows": list(range(60_000))}
    store.write_json("hot.json", {"rows": [], "gen": -1})
    stop = threading.Event()
    errors: list[BaseException] = []
    seen: set[int] = set()
    reads: list[int] = []

    def writer() -> None:
        try:
            for gen in range(15):
                store.write_json("hot.json", {**big, "gen": gen}, indent=None)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            stop.set()

    def reader() -> None:
        try:
            while not stop.is_set():
                doc = store.read_json("hot.json")  # raises JSONDecodeError on a torn read
                seen.add(doc["gen"])
                reads.append(1)
                assert doc["gen"] == -1 or len(doc["rows"]) == 60_000
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert store.read_json("hot.json")["gen"] == 14
    assert len(reads) >= 2 and len(seen) >= 1
    if store.is_local:
        assert not [n for n in os.listdir(store.uri("")[len("file://"):]) if n.startswith(TMP_PREFIX)]


def test_failing_writer_leaves_nothing_behind_on_file(tmp_path) -> None:
    store = Store(f"file://{tmp_path}/s")
    store.write_bytes("dir/keep.json", b'{"old": true}')

    class Boom(RuntimeError):
        pass

    with pytest.raises(Boom):
        with store.open_write("dir/new.bin") as f:
            f.write(b"partial" * 1000)
            raise Boom()
    with pytest.raises(Boom):
        with store.open_write("dir/keep.json") as f:
            f.write(b'{"new": ')
            raise Boom()
    # A JSON-unserialisable object fails before anything is written.
    with pytest.raises(TypeError):
        store.write_json("dir/bad.json", {"x": object()})

    assert sorted(os.listdir(tmp_path / "s" / "dir")) == ["keep.json"]
    assert json.loads((tmp_path / "s" / "dir" / "keep.json").read_text()) == {"old": True}


def test_failing_writer_uploads_nothing_on_s3(s3_url: str) -> None:
    store = Store(s3_url)
    with pytest.raises(RuntimeError):
        with store.open_write("x.bin") as f:
            f.write(b"partial")
            raise RuntimeError("writer died")
    assert not store.exists("x.bin")


def test_local_store_defaults_and_plain_paths(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CL_STORE", raising=False)  # the default when CL_STORE is not set
    assert default_store_url() == f"file://{tmp_path}/.cl_store"
    assert Store().url == f"file://{tmp_path}/.cl_store"
    plain = Store(str(tmp_path / "plain"))
    plain.write_bytes("x", b"1")
    assert (tmp_path / "plain" / "x").read_bytes() == b"1"
    assert as_store(str(tmp_path / "plain")) == plain
    assert as_store(plain) is plain
    with pytest.raises(ValueError, match="unsupported scheme"):
        Store("gs://bucket/x")
    with pytest.raises(TypeError, match="only used by s3"):
        Store(str(tmp_path), key="k")


def test_s3_options_from_env_and_explicit(moto_s3, s3_url: str, monkeypatch) -> None:
    from_env = Store(s3_url)
    from_env.write_bytes("e", b"env")
    for name in ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]:
        monkeypatch.delenv(name)
    explicit = Store(s3_url, **moto_s3.options())
    assert explicit.read_bytes("e") == b"env"
    assert explicit.storage_options()["endpoint_url"] == moto_s3.endpoint_url
    with pytest.raises(ValueError, match="no bucket"):
        Store("s3://")


def test_pyarrow_parquet_through_ray_style_paths(store: Store) -> None:
    """What Ray Data will do: read store parquet through the pyarrow filesystem, no scheme."""
    table = pa.table({"v": pa.array(range(10), pa.int32())})
    store.write_parquet("ds/part-0.parquet", table)
    fs, root = store.pyarrow_filesystem()
    assert pq.read_table(f"{root}/ds/part-0.parquet", filesystem=fs).equals(table)


# ------------------------------------------------------------------ compare-and-swap


def test_conditional_replace_two_writers_one_wins(store: Store) -> None:
    from cl_platform.store import ConflictError

    created = store.write_bytes_if_match("state/s.json", b"v0", None)
    data, version = store.read_bytes_versioned("state/s.json")
    assert data == b"v0" and version == created
    # two writers read the same version; the first write wins, the second is refused
    _, seen_by_b = store.read_bytes_versioned("state/s.json")
    won = store.write_bytes_if_match("state/s.json", b"written by a", version)
    with pytest.raises(ConflictError, match="no longer at version"):
        store.write_bytes_if_match("state/s.json", b"written by b", seen_by_b)
    assert store.read_bytes_versioned("state/s.json") == (b"written by a", won)
    # the loser reads again and writes on top of the winner
    data, now = store.read_bytes_versioned("state/s.json")
    store.write_bytes_if_match("state/s.json", data + b" + b", now)
    assert store.read_bytes("state/s.json") == b"written by a + b"
    assert store.list("state") == ["s.json"]  # no temp or lock files


def test_conditional_write_on_absent_and_present_objects(store: Store) -> None:
    from cl_platform.store import ConflictError

    with pytest.raises(FileNotFoundError, match="nope.json"):
        store.read_bytes_versioned("nope.json")
    version = store.write_bytes_if_match("x.json", b"first", None)
    with pytest.raises(ConflictError, match="already there"):
        store.write_bytes_if_match("x.json", b"second", None)  # create-only: there is an object
    with pytest.raises(ConflictError):
        store.write_bytes_if_match("gone.json", b"x", version)  # a version named, no object
    assert not store.exists("gone.json")
    store.delete("x.json")
    with pytest.raises(ConflictError):
        store.write_bytes_if_match("x.json", b"third", version)  # deleted since it was read
    with pytest.raises(TypeError, match="non-empty str"):
        store.write_bytes_if_match("x.json", b"x", "")


def test_conditional_replace_has_exactly_one_winner_under_contention(store: Store) -> None:
    from cl_platform.store import ConflictError

    store.write_bytes_if_match("race.json", b"base", None)
    _, version = store.read_bytes_versioned("race.json")
    winners: list[int] = []
    barrier = threading.Barrier(6)

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            store.write_bytes_if_match("race.json", f"writer-{i}".encode(), version)
            winners.append(i)
        except ConflictError:
            pass

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    assert store.read_bytes("race.json") == f"writer-{winners[0]}".encode()


_INCREMENT = """
import sys
from cl_platform.store import ConflictError, Store
store, done = Store(sys.argv[1]), 0
while done < int(sys.argv[2]):
    data, version = store.read_bytes_versioned("counter")
    try:
        store.write_bytes_if_match("counter", str(int(data) + 1).encode(), version)
        done += 1
    except ConflictError:
        pass
"""


def test_local_conditional_writes_lose_no_update_across_processes(tmp_path) -> None:
    """Four processes each add 40 to a counter by read + conditional write: none is lost."""
    import subprocess
    import sys

    store = Store(f"file://{tmp_path}/s")
    store.write_bytes_if_match("counter", b"0", None)
    procs = [subprocess.Popen([sys.executable, "-c", _INCREMENT, store.url, "40"]) for _ in range(4)]
    assert [p.wait(120) for p in procs] == [0] * 4
    assert store.read_bytes("counter") == b"160"
    assert os.listdir(tmp_path / "s") == ["counter"]


def test_local_conditional_replace_is_atomic_and_fails_cleanly(tmp_path, monkeypatch) -> None:
    store = Store(f"file://{tmp_path}/s")
    version = store.write_bytes_if_match("a.json", b"old", None)

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        store.write_bytes_if_match("a.json", b"new", version)
    monkeypatch.undo()
    assert store.read_bytes_versioned("a.json") == (b"old", version)  # still writable at the same version
    assert os.listdir(tmp_path / "s") == ["a.json"]
    store.write_bytes_if_match("a.json", b"new", version)
    assert store.read_bytes("a.json") == b"new"


def test_s3_conditional_write_is_the_servers_if_match_on_the_etag(moto_s3, s3_url: str) -> None:
    """The version is the ETag; a PUT by any other client in between makes the conditional write fail."""
    import boto3

    from cl_platform.store import ConflictError

    store = Store(s3_url)
    version = store.write_bytes_if_match("k.json", b"one", None)
    bucket, prefix = s3_url[len("s3://"):].split("/", 1)
    client = boto3.client("s3", endpoint_url=moto_s3.endpoint_url, aws_access_key_id=moto_s3.key,
                          aws_secret_access_key=moto_s3.secret, region_name=moto_s3.region)
    assert client.head_object(Bucket=bucket, Key=f"{prefix}/k.json")["ETag"] == version
    client.put_object(Bucket=bucket, Key=f"{prefix}/k.json", Body=b"foreign")
    with pytest.raises(ConflictError):
        store.write_bytes_if_match("k.json", b"two", version)
    assert store.read_bytes("k.json") == b"foreign"
    # the same bytes written by two writers of one version: the second still loses
    _, now = store.read_bytes_versioned("k.json")
    store.write_bytes_if_match("k.json", b"same", now)
    with pytest.raises(ConflictError):
        store.write_bytes_if_match("k.json", b"same", now)
