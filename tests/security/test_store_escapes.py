"""Nothing the store does leaves it: S3 keys with ``..`` in ``get_dir``, symbolic links out of a
``file://`` store for reads, writes, listings and the rest (:mod:`cl_platform.store`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cl_platform.store import Store, StoreEscapeError


def _put_raw_key(moto_s3, s3_url: str, key: str, body: bytes = b"x") -> None:
    """Create an object under the test's prefix with boto3, bypassing the store's path check."""
    import boto3

    bucket, prefix = s3_url[len("s3://"):].split("/", 1)
    client = boto3.client("s3", endpoint_url=moto_s3.endpoint_url, aws_access_key_id=moto_s3.key,
                          aws_secret_access_key=moto_s3.secret, region_name=moto_s3.region)
    client.put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=body)


# ------------------------------------------------------------------------------ S3 keys


@pytest.mark.parametrize("bad", ["models/m/../../../outside/evil.bin", "models/m/sub/../../../../outside/evil.bin"])
def test_get_dir_refuses_dotdot_keys_before_creating_anything(moto_s3, s3_url: str, tmp_path: Path, bad: str) -> None:
    store = Store(s3_url)
    store.write_bytes("models/m/a/ok.bin", b"ok")
    _put_raw_key(moto_s3, s3_url, bad)
    assert any(".." in p for p in store.walk("models/m")), "the server kept the key as given"
    target = tmp_path / "deep" / "target"
    with pytest.raises(ValueError, match=r"'\.\.'") as err:
        store.get_dir("models/m", target)
    assert "evil.bin" in str(err.value)
    assert not (tmp_path / "outside").exists() and not (tmp_path / "deep" / "outside").exists()
    assert not target.exists(), "nothing is created, not even the good files' directories"


@pytest.mark.parametrize("bad", ["models/m//empty.bin", "models/m/back\\slash.bin"])
def test_get_dir_refuses_empty_parts_and_backslashes(moto_s3, s3_url: str, tmp_path: Path, bad: str) -> None:
    store = Store(s3_url)
    store.write_bytes("models/m/ok.bin", b"ok")
    _put_raw_key(moto_s3, s3_url, bad)
    with pytest.raises(ValueError, match="not allowed"):
        store.get_dir("models/m", tmp_path / "target")
    assert not (tmp_path / "target").exists()


def test_get_dir_of_clean_keys_still_works(s3_url: str, tmp_path: Path) -> None:
    store = Store(s3_url)
    store.write_bytes("models/m/a/b.bin", b"b")
    store.write_bytes("models/m/c.bin", b"c")
    store.get_dir("models/m", tmp_path / "t")
    assert (tmp_path / "t" / "a" / "b.bin").read_bytes() == b"b" and (tmp_path / "t" / "c.bin").read_bytes() == b"c"


# ------------------------------------------------------------------------------ file:// links


@pytest.fixture
def linked(tmp_path: Path) -> tuple[Store, Path]:
    """A local store with links out of it: ``out.txt`` (a file), ``outdir`` (a directory),
    ``sub/deep`` (a directory, one level down), ``dangling`` (a target that does not exist yet);
    plus ``in.txt`` and ``alias``, links that stay inside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"outside data")
    root = tmp_path / "store"
    store = Store(str(root))
    store.write_bytes("real/a.txt", b"a")
    os.symlink(outside / "secret.txt", root / "out.txt")
    os.symlink(outside, root / "outdir")
    (root / "sub").mkdir()
    os.symlink(outside, root / "sub" / "deep")
    os.symlink(outside / "new.txt", root / "dangling")
    os.symlink(root / "real" / "a.txt", root / "in.txt")
    os.symlink(root / "real", root / "alias")
    os.symlink(root, root / "real" / "loop")  # a link back to an ancestor
    return store, outside


@pytest.mark.parametrize("path", ["out.txt", "outdir/secret.txt", "sub/deep/secret.txt"])
def test_reads_through_links_out_of_the_store_are_refused(linked, path: str) -> None:
    store, _ = linked
    for read in (store.read_bytes, store.read_bytes_versioned, store.info, store.exists, store.is_dir):
        with pytest.raises(StoreEscapeError, match=path.replace(".", r"\.")):
            read(path)
    with pytest.raises(StoreEscapeError):
        with store.open_read(path):
            pass
    with pytest.raises(StoreEscapeError):
        store.read_parquet(path)


@pytest.mark.parametrize("path", ["out.txt", "outdir/new.txt", "sub/deep/x/new.txt", "dangling"])
def test_writes_through_links_out_of_the_store_are_refused(linked, path: str) -> None:
    store, outside = linked
    before = sorted(p.name for p in outside.rglob("*"))
    for write in (lambda: store.write_bytes(path, b"w"), lambda: store.write_bytes_if_absent(path, b"w"),
                  lambda: store.write_bytes_if_match(path, b"w", None), lambda: store.write_json(path, {})):
        with pytest.raises(StoreEscapeError):
            write()
    with pytest.raises(StoreEscapeError):
        with store.open_write(path) as f:
            f.write(b"w")
    with pytest.raises(StoreEscapeError):
        store.delete(path, recursive=True)
    assert sorted(p.name for p in outside.rglob("*")) == before
    assert (outside / "secret.txt").read_bytes() == b"outside data"


def test_put_dir_into_a_link_out_of_the_store_writes_nothing(linked, tmp_path: Path) -> None:
    store, outside = linked
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_bytes(b"f")
    with pytest.raises(StoreEscapeError):
        store.put_dir(src, "outdir/up")
    assert not (outside / "up").exists()


def test_listings_skip_links_out_of_the_store(linked) -> None:
    store, _ = linked
    assert store.list("") == ["alias", "in.txt", "real", "sub"]
    assert store.list("sub") == []
    assert store.walk("") == ["alias/a.txt", "in.txt", "real/a.txt"]
    assert store.glob("*.txt") == ["in.txt"]
    assert "real/a.txt" in store.glob("*/*.txt") and not any(
        p.startswith(("outdir/", "sub/")) for p in store.glob("**/*.txt"))


def test_links_inside_the_store_still_work(linked, tmp_path: Path) -> None:
    store, _ = linked
    assert store.read_bytes("in.txt") == b"a" and store.read_bytes("alias/a.txt") == b"a"
    store.get_dir("real", tmp_path / "copy")
    assert (tmp_path / "copy" / "a.txt").read_bytes() == b"a"


def test_a_sub_store_at_a_link_out_of_the_store_is_refused(linked) -> None:
    store, _ = linked
    with pytest.raises(StoreEscapeError):
        store.sub("outdir")
    assert store.sub("real").read_bytes("a.txt") == b"a"
