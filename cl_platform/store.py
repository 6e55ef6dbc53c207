"""One artifact store for everything the platform persists: tasks, streams, runs, caches.

A :class:`Store` is a root URL plus paths relative to it. Two backends, one API:

- ``file://<abs path>`` (or a plain local path); the default is ``$CL_STORE``, else
  ``file://<cwd>/.cl_store`` (see "Where the store is" below).
- ``s3://bucket/prefix`` through s3fs. Endpoint, credentials and region come from explicit
  options (``endpoint_url=``, ``key=``, ``secret=``, ``token=``, ``region=``) or else from the
  standard AWS environment variables (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``,
  ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
  ``AWS_REGION`` / ``AWS_DEFAULT_REGION``), read once when the store is built.

Paths are relative, ``/``-separated, and checked before any join: an empty component, ``.``,
``..``, a leading ``/`` or a backslash raises ``ValueError`` naming the path.

Nothing leaves the store:

- On ``file://`` every operation resolves the real path of its target (symbolic links followed, at
  any level) and refuses one outside the store's real root with :class:`StoreEscapeError` (a
  ``ValueError`` naming the path): reads, writes, ``exists``, ``is_dir``, ``info``, deletes. Listings
  (``list``, ``walk``, ``glob``) skip such entries and never descend into a linked directory that
  leaves the store. (A link swapped in between the check and the use is not guarded against: the
  store's directory must not be writable by someone you do not trust.)
- ``get_dir`` checks the relative key of every object it is about to download with the store's
  path rule (no ``..``, no absolute part, no backslash) before it creates anything: an S3 key
  such as ``prefix/../../x`` raises ``ValueError`` naming it, and nothing is created outside (or
  inside) the target directory.

Credentials (S3) never travel with the store. A store pickles as its URL and its non-secret
options (endpoint, region); the key, secret and session token that came from the environment are
left out and resolved again from the environment of the process that unpickles it (on a cluster:
the pod's environment from the Kubernetes Secret, or an instance role / IRSA with no keys at all).
:meth:`Store.pyarrow_filesystem` builds its ``S3FileSystem`` without keys, so that it too resolves
them through the AWS default chain wherever it is unpickled (Ray Data read tasks, Ray Train's
storage). Credentials passed explicitly (``key=``, ``secret=``, ``token=``) are the caller's: they
stay in the store's pickle, and ``pyarrow_filesystem()`` refuses such a store unless asked for a
filesystem meant for this process only (``explicit_credentials=True``). For Ray, put them in the
environment instead.

Atomicity (what a concurrent reader can observe):

- ``write_bytes`` / ``write_json`` / ``write_parquet`` / ``open_write`` never expose a partial
  object. On ``file://`` the data goes to a hidden temp file in the target directory
  (``.cl-tmp-*``), is fsync'ed, then ``os.replace``'d over the target; a failing writer leaves
  neither the target nor the temp file behind. On S3 an object becomes visible only when its
  single PUT (or its multipart upload) completes, so a reader sees the old object or the new
  one, never half of one; a failing writer uploads nothing.
- ``write_bytes_if_absent`` is a conditional create (first writer wins): on ``file://`` the
  complete temp file is hard-linked to the target (``link`` fails if the target exists); on S3 it
  is a PUT with ``If-None-Match: *`` (supported by AWS S3 since 2024 and by moto). An S3-compatible
  server that ignores that header would silently overwrite; such a server is not supported for
  leases. A filesystem without hard links falls back to ``O_EXCL`` create-then-write, which is
  exclusive but lets a reader see the object before its content is complete.
- ``put_dir`` writes each file atomically but the directory as a whole is not atomic: write a
  marker (e.g. ``_READY``) after it when readers need the whole directory.

Compare-and-swap (:meth:`Store.read_bytes_versioned` / :meth:`Store.write_bytes_if_match`): a
*version* names the content of an object as read, and a conditional write replaces the object only
if it still holds that version (``None``: only if there is no object), else it raises
:class:`ConflictError` and writes nothing. A version is opaque: on S3 the object's ETag, checked by
the server with ``If-Match`` (``If-None-Match: *`` for a create) in the one PUT that writes it; on
``file://`` the SHA-256 of the content, checked and replaced under an exclusive ``flock`` of the
object itself (the complete new content is then ``os.replace``'d over it, so readers still never
see a partial object). The lock is held only between the comparison and the rename; the kernel
drops it when its holder dies, so a crashed writer blocks no one, and a writer waiting for it gives
up with ``TimeoutError`` after :data:`CAS_LOCK_TIMEOUT` seconds. Equal content is the same
version on both backends, so a write that puts back bytes an object held before (A-B-A) passes
for the version of those bytes: callers that must tell such writes apart put a counter in the
content (the lineage state and the run ledger do). Only writers that use the conditional methods
are serialised: a plain ``write_bytes`` to the same path still replaces it unconditionally. As with
``If-None-Match``, an S3-compatible server that ignores ``If-Match`` would overwrite silently;
such a server is not supported for the lineage state and run ledgers (AWS S3 and moto honour it).

Where the store is (``Store(None)`` / :func:`default_store_url`): the ``CL_STORE`` environment
variable when set, else ``./.cl_store`` of the current directory. Inside a submitted Ray job
(``ray job submit``; Ray gives the job's driver ``RAY_JOB_CONFIG_JSON_ENV_VAR``) the current
directory is Ray's unpacked copy of the job's working dir, which Ray deletes with its temp dir: a
local store there, the default or a path given explicitly, would lose everything written to it.
Building such a store raises :class:`StoreLocationError` (a ``ValueError``) before anything is
written, asking for ``--store`` or ``CL_STORE``; an absolute path outside that copy, or
``s3://``, is fine.

Listings are never cached (``use_listings_cache=False`` for s3fs): the scheduler polls the store
for objects other processes write. Temp files of in-flight local writes are hidden from
``list``/``walk``/``glob``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import hashlib
import json
import os
import posixpath
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import IO, Any, Iterator
from urllib.parse import urlparse

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

#: Directory name of the default store, under the current working directory.
DEFAULT_STORE_DIRNAME = ".cl_store"

#: Environment variable naming the store when no URL is given (``file://...`` or ``s3://...``).
STORE_ENV = "CL_STORE"

#: Set by Ray in the environment of a submitted job's driver: the job's config as JSON
#: (``runtime_env``, and ``metadata`` with the ``job_submission_id``).
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"

#: Prefix of the hidden temp files that local atomic writes create next to their target.
TMP_PREFIX = ".cl-tmp-"

# Objects larger than this are staged on local disk (not in memory) before an S3 upload.
_S3_SPOOL_BYTES = 64 * 2**20

#: Seconds a local conditional write waits for another writer's lock on the same object.
CAS_LOCK_TIMEOUT = 30.0


@dataclass(frozen=True)
class StoreInfo:
    """What the store knows about one path.

    Attributes:
        path: the path relative to the store root.
        size: size in bytes (0 for a directory / prefix).
        mtime: modification time as seconds since the epoch (UTC); ``None`` for an S3 prefix,
            which has no time of its own. S3 times have one-second resolution.
        is_dir: True for a directory (file://) or a common prefix (S3).
    """

    path: str
    size: int
    mtime: float | None
    is_dir: bool


class StoreLocationError(ValueError):
    """A local store inside a submitted Ray job's working-directory copy (lost with the job)."""


class StoreEscapeError(ValueError):
    """A ``file://`` store path whose real path (symbolic links followed) lies outside the store."""


class ConflictError(RuntimeError):
    """A conditional write lost: the object is not at the version the writer named.

    Raised by :meth:`Store.write_bytes_if_match` when the object changed (or appeared, or went
    away) since the writer read it; nothing was written. Retrying the same write is never right:
    read the object again and decide again (or stop, when the change means another process took
    over).
    """


@dataclass(frozen=True)
class RayJobDriver:
    """What Ray tells the driver of a submitted job about itself (see :func:`ray_job_driver`).

    Attributes:
        submission_id: the job's submission id (``""`` if Ray's config does not name it).
        working_dir: True if the job has a ``working_dir`` (the driver's current directory is
            Ray's unpacked copy of it); also True when Ray's config cannot be read.
    """

    submission_id: str
    working_dir: bool


def ray_job_driver() -> RayJobDriver | None:
    """The submitted Ray job this process is the driver of (or a child of), None outside one."""
    raw = os.environ.get(RAY_JOB_ENV)
    if not raw:
        return None
    try:
        config = json.loads(raw)
        runtime_env = config.get("runtime_env") or {}
        metadata = config.get("metadata") or {}
        return RayJobDriver(str(metadata.get("job_submission_id") or ""), bool(runtime_env.get("working_dir")))
    except (ValueError, AttributeError):
        return RayJobDriver("", True)


def default_store_url() -> str:
    """Where a store lives when no URL is given: ``$CL_STORE``, else ``file://<cwd>/.cl_store``.

    Never raises: building the store (``Store(None)``) is what refuses the ``./.cl_store``
    default inside a submitted Ray job.
    """
    return os.environ.get(STORE_ENV) or "file://" + os.path.join(os.getcwd(), DEFAULT_STORE_DIRNAME)


def check_store_location(root: str, *, given: bool) -> None:
    """Refuse a local store root that a submitted Ray job would lose (module docstring).

    ``root`` is the store's absolute local root; ``given`` says whether a URL was passed (or
    ``CL_STORE`` set) rather than the ``./.cl_store`` default. Outside a Ray job: nothing.
    """
    job = ray_job_driver()
    if job is None:
        return
    cwd = os.path.realpath(os.getcwd())
    real = os.path.realpath(root)
    inside = os.path.commonpath([real, cwd]) == cwd
    if given and not (inside and job.working_dir):
        return
    name = f"Ray job {job.submission_id}" if job.submission_id else "a Ray job"
    if inside and job.working_dir:
        where = (f"inside the working directory of {name} ({cwd}): Ray's temporary copy of the "
                 "submitted --working-dir, deleted with Ray's temp dir")
    else:
        where = f"the default store of {name}, in the job driver's current directory ({cwd})"
    raise StoreLocationError(
        f"{'' if given else 'no --store and no CL_STORE: '}store file://{real} is {where}. What the run "
        "writes there would be lost, and the store you meant (with its base model and tasks) would not "
        "be used. Pass --store with a location that outlives the job (an absolute path the cluster "
        f"keeps, file:///abs/path/.cl_store, or s3://bucket/prefix), or set {STORE_ENV} for the job: "
        f"ray job submit --runtime-env-json '{{\"env_vars\": {{\"{STORE_ENV}\": \"s3://bucket/prefix\"}}}}' ..."
    )


def check_path(path: str, *, allow_root: bool = False, what: str = "store path") -> str:
    """Validate a store-relative path and return it unchanged.

    Raises ``ValueError`` naming the path if it is absolute, has an empty, ``.`` or ``..``
    component, or contains a backslash or NUL. ``""`` (the root) is allowed only when
    ``allow_root`` is set.
    """
    if not isinstance(path, str):
        raise TypeError(f"{what} must be a str, got {type(path).__name__}: {path!r}")
    if path == "":
        if allow_root:
            return path
        raise ValueError(f"{what} {path!r}: empty path (the store root) is not allowed here")
    if path.startswith("/"):
        raise ValueError(f"{what} {path!r}: absolute paths are not allowed; give a path relative to the store root")
    if "\\" in path or "\x00" in path:
        raise ValueError(f"{what} {path!r}: backslash and NUL characters are not allowed")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            shown = part or "(empty)"
            raise ValueError(f"{what} {path!r}: component {shown!r} is not allowed (no empty, '.' or '..' components)")
    return path


def join(*parts: str) -> str:
    """Join store-relative path pieces with ``/`` (empty pieces are dropped)."""
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


class Store:
    """An fsspec-backed artifact store rooted at a URL (see the module docstring).

    Args:
        url: ``file://...``, a plain local path, or ``s3://bucket[/prefix]``; ``None`` means
            :func:`default_store_url` (``$CL_STORE``, else ``./.cl_store``). A local root inside
            a submitted Ray job's working-directory copy raises :class:`StoreLocationError`
            (and ``None`` without ``CL_STORE`` inside any Ray job).
        **storage_options: for S3 only: ``endpoint_url``, ``key``, ``secret``, ``token``,
            ``region``, plus anything else ``s3fs.S3FileSystem`` accepts.

    A store pickles as its URL and resolved options without the credentials that came from the
    environment (explicit ``key``/``secret``/``token`` stay), so it can be shipped to Ray workers;
    the receiving process resolves credentials from its own environment, and the filesystem
    object is rebuilt lazily there.
    """

    def __init__(self, url: str | None = None, **storage_options: Any) -> None:
        given = url is not None or bool(os.environ.get(STORE_ENV))
        url = default_store_url() if url is None else str(url)
        if not url:
            raise ValueError("store URL is empty")
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        if scheme in ("", "file"):
            if storage_options:
                raise TypeError(f"store {url!r}: storage options {sorted(storage_options)} are only used by s3:// stores")
            local = url.split("://", 1)[1] if scheme else url
            if not local:
                raise ValueError(f"store URL {url!r} has no path")
            self.protocol = "file"
            self._root = os.path.abspath(os.path.expanduser(local)).replace(os.sep, "/").rstrip("/") or "/"
            check_store_location(self._root, given=given)
            self._options: dict[str, Any] = {}
        elif scheme in ("s3", "s3a"):
            rest = url.split("://", 1)[1].strip("/")
            bucket = rest.split("/", 1)[0]
            if not bucket:
                raise ValueError(f"store URL {url!r}: no bucket name")
            prefix = rest[len(bucket):].strip("/")
            if prefix:
                check_path(prefix, what=f"store URL {url!r} prefix")
            self.protocol = "s3"
            self._root = join(bucket, prefix)
            self._options = _resolve_s3_options(storage_options)
        else:
            raise ValueError(f"store URL {url!r}: unsupported scheme {scheme!r}; use file://, a local path, or s3://")
        self._explicit_credentials = frozenset(k for k in _CREDENTIAL_OPTIONS if storage_options.get(k) is not None)
        self._fs: fsspec.AbstractFileSystem | None = None

    # ----------------------------------------------------------------------------- plumbing

    @property
    def url(self) -> str:
        """The root URL, normalised (``file:///abs/path`` or ``s3://bucket/prefix``)."""
        return self.uri("")

    @property
    def is_local(self) -> bool:
        return self.protocol == "file"

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The fsspec filesystem (built on first use)."""
        if self._fs is None:
            if self.is_local:
                self._fs = fsspec.filesystem("file", auto_mkdir=True)
            else:
                import s3fs  # imported lazily: a local store does not need it

                opts = dict(self._options)
                region = opts.pop("region", None)
                client_kwargs = dict(opts.pop("client_kwargs", None) or {})
                if region:
                    client_kwargs.setdefault("region_name", region)
                opts.setdefault("use_listings_cache", False)
                self._fs = s3fs.S3FileSystem(client_kwargs=client_kwargs, **opts)
        return self._fs

    def __getstate__(self) -> dict:
        explicit = getattr(self, "_explicit_credentials", frozenset())
        options = {k: v for k, v in self._options.items() if k not in _CREDENTIAL_OPTIONS or k in explicit}
        return {"protocol": self.protocol, "_root": self._root, "_options": options,
                "_explicit_credentials": explicit, "_fs": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("_explicit_credentials", frozenset())
        if self.protocol == "s3":  # credentials from this process's environment (class docstring)
            self._options = _resolve_s3_options(self._options)

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Store) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def _joined(self, path: str, *, allow_root: bool = False) -> str:
        """``path`` checked (:func:`check_path`) and joined to the root; no filesystem access."""
        check_path(path, allow_root=allow_root)
        return self._root if path == "" else f"{self._root.rstrip('/')}/{path}"

    def _full(self, path: str, *, allow_root: bool = False) -> str:
        """The full path an operation on ``path`` uses: checked, and on file:// inside the store's real root."""
        full = self._joined(path, allow_root=allow_root)
        if self.is_local:
            real = os.path.realpath(full)
            if not _within(real, os.path.realpath(self._root)):
                raise StoreEscapeError(
                    f"store {self.url}: path {path!r} resolves to {real}, outside the store (a symbolic "
                    "link leads out of it); refused"
                )
        return full

    def _inside(self, full: str) -> bool:
        """For listings: False for a file:// entry whose real path leaves the store (always True on S3)."""
        return not self.is_local or _within(os.path.realpath(full), os.path.realpath(self._root))

    def _rel(self, full: str) -> str:
        full = full.rstrip("/")
        if self.protocol == "s3":
            full = full.split("://", 1)[-1]
        root = self._root.rstrip("/")
        if full == root:
            return ""
        if not full.startswith(root + "/"):
            raise RuntimeError(f"store {self.url}: listed path {full!r} is outside the root")
        return full[len(root) + 1:]

    def uri(self, path: str = "") -> str:
        """Full URL of ``path``: ``file:///abs/root/path`` or ``s3://bucket/prefix/path``."""
        full = self._joined(path, allow_root=True)
        return ("file://" if self.is_local else "s3://") + full

    def sub(self, path: str) -> "Store":
        """A store rooted at ``path`` inside this one, sharing its options."""
        check_path(path)
        child = object.__new__(Store)
        child.__setstate__(self.__getstate__())
        child._root = self._full(path)
        return child

    # ----------------------------------------------------------------------------- reads

    def read_bytes(self, path: str) -> bytes:
        """The whole object at ``path``; ``FileNotFoundError`` naming the URI if absent."""
        full = self._full(path)
        try:
            return self.fs.cat_file(full)
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, "no such object in the store", self.uri(path)) from None
        except IsADirectoryError:
            raise IsADirectoryError(errno.EISDIR, "is a directory, not an object", self.uri(path)) from None

    def read_json(self, path: str) -> Any:
        """Parse the object at ``path`` as UTF-8 JSON (``json.JSONDecodeError`` if it is not)."""
        return json.loads(self.read_bytes(path).decode("utf-8"))

    def read_parquet(self, path: str, columns: list[str] | None = None) -> pa.Table:
        """Read a parquet object into a ``pyarrow.Table`` (streamed from the store, read once)."""
        full = self._full(path)
        try:
            with self.fs.open(full, "rb") as f:
                return pq.read_table(f, columns=columns)
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, "no such object in the store", self.uri(path)) from None

    @contextlib.contextmanager
    def open_read(self, path: str) -> Iterator[IO[bytes]]:
        """A binary file object for streaming reads of ``path``."""
        full = self._full(path)
        try:
            f = self.fs.open(full, "rb")
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, "no such object in the store", self.uri(path)) from None
        with f:
            yield f

    # ----------------------------------------------------------------------------- writes

    @contextlib.contextmanager
    def open_write(self, path: str) -> Iterator[IO[bytes]]:
        """Write ``path`` through a binary file object; the object appears only on a clean exit.

        If the ``with`` body raises, nothing is written and no temp file is left (see the module
        docstring for the per-backend mechanics).
        """
        full = self._full(path)
        if self.is_local:
            with _local_atomic_file(full) as f:
                yield f
            return
        with tempfile.SpooledTemporaryFile(max_size=_S3_SPOOL_BYTES) as spool:
            yield spool
            spool.flush()
            size = spool.tell()
            spool.seek(0)
            if size <= _S3_SPOOL_BYTES:
                self.fs.pipe_file(full, spool.read())
            else:
                # Large object: stage it as a named file so s3fs can do a multipart upload,
                # which becomes visible only when it completes.
                with tempfile.NamedTemporaryFile() as staged:
                    shutil.copyfileobj(spool, staged)
                    staged.flush()
                    self.fs.put_file(staged.name, full)

    def write_bytes(self, path: str, data: bytes) -> None:
        """Atomically create or replace the object at ``path`` with ``data``."""
        data = bytes(data)
        full = self._full(path)
        if self.is_local:
            with _local_atomic_file(full) as f:
                f.write(data)
        else:
            self.fs.pipe_file(full, data)

    def write_json(self, path: str, obj: Any, *, indent: int | None = 2) -> None:
        """Atomically write ``obj`` as UTF-8 JSON (serialised first: a bad object writes nothing)."""
        text = json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False)
        self.write_bytes(path, (text + "\n").encode("utf-8"))

    def write_parquet(self, path: str, table: pa.Table, **write_options: Any) -> None:
        """Atomically write ``table`` as parquet (``write_options`` go to ``pyarrow.parquet.write_table``)."""
        with self.open_write(path) as f:
            pq.write_table(table, f, **write_options)

    def write_bytes_if_absent(self, path: str, data: bytes) -> bool:
        """Create ``path`` with ``data`` only if nothing is there; True if this call created it.

        Exactly one of several concurrent callers gets True (see the module docstring for the
        mechanics and the one documented exception). On S3, a PUT that succeeded but whose
        response was lost and retried by the client reports False.
        """
        data = bytes(data)
        full = self._full(path)
        if self.is_local:
            return _local_create_exclusive(full, data)
        try:
            self.fs.pipe_file(full, data, mode="create")
        except FileExistsError:
            return False
        except OSError as exc:  # 409: another conditional write to this key is in flight
            if "ConditionalRequestConflict" in str(exc):
                return False
            raise
        return True

    # ----------------------------------------------------------------------------- compare-and-swap

    def read_bytes_versioned(self, path: str) -> tuple[bytes, str]:
        """The object at ``path`` and its version (module docstring), read together.

        On S3 both come from one GET (the content and the ETag of the same object); on
        ``file://`` the version is computed from the content read. ``FileNotFoundError`` naming
        the URI if there is no object.
        """
        full = self._full(path)
        if self.is_local:
            try:
                with open(full, "rb") as f:
                    data = f.read()
            except (FileNotFoundError, IsADirectoryError):
                raise FileNotFoundError(errno.ENOENT, "no such object in the store", self.uri(path)) from None
            return data, _content_version(data)
        from fsspec.asyn import sync

        bucket, key, _ = self.fs.split_path(full)
        try:
            return sync(self.fs.loop, _s3_get_versioned, self.fs, bucket, key)
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, "no such object in the store", self.uri(path)) from None

    def write_bytes_if_match(self, path: str, data: bytes, expected: str | None) -> str:
        """Replace ``path`` with ``data`` only if it is still at version ``expected``; returns the new version.

        ``expected`` is a version from :meth:`read_bytes_versioned` (or from an earlier call of
        this method); ``None`` means "only if there is no object" (a conditional create). If the
        object is at another version, or absent when a version was named, or present when
        ``None`` was, :class:`ConflictError` is raised and nothing is written: of several
        writers naming the same version, exactly one succeeds. The write is atomic (module
        docstring). On S3 the check is the server's (``If-Match`` / ``If-None-Match: *`` in a
        single PUT, so objects up to 5 GB). A PUT that landed but whose response was lost, and
        that the client then retried, reports :class:`ConflictError` (the retry finds the new
        version): the caller reads again and finds its own write. Reporting success when the
        object holds exactly ``data`` would be wrong: another writer may have written the same
        bytes.
        """
        data = bytes(data)
        if expected is not None and (not isinstance(expected, str) or not expected):
            raise TypeError(f"expected version of {self.uri(path)} must be a non-empty str or None, got {expected!r}")
        full = self._full(path)
        if self.is_local:
            if expected is None:
                if not _local_create_exclusive(full, data):
                    raise ConflictError(f"{self.uri(path)}: an object is already there (conditional create lost)")
                return _content_version(data)
            _local_replace_if_match(full, data, expected, self.uri(path))
            return _content_version(data)
        bucket, key, _ = self.fs.split_path(full)
        condition = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": expected}
        try:
            out = self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **condition)
        except OSError as exc:  # s3fs turns 412 / 409 / 404 into OSError subclasses
            if not _s3_condition_failed(exc):
                raise
            what = "an object is already there" if expected is None else f"it is no longer at version {expected}"
            raise ConflictError(f"{self.uri(path)}: {what} (conditional write lost)") from None
        finally:
            self.fs.invalidate_cache(full)
        return out["ETag"]

    def put_dir(self, local_dir: str | os.PathLike, path: str) -> list[str]:
        """Upload every file under ``local_dir`` to ``path/<relative path>``; returns the store paths.

        Each file is written atomically; the set of files is not (write a marker afterwards).
        Symbolic links to files are followed; empty directories are not represented.
        """
        local_dir = os.fspath(local_dir)
        if not os.path.isdir(local_dir):
            raise NotADirectoryError(errno.ENOTDIR, "put_dir needs a local directory", local_dir)
        check_path(path)
        pairs: list[tuple[str, str]] = []
        for dirpath, dirnames, filenames in os.walk(local_dir):
            dirnames.sort()
            for name in sorted(filenames):
                lpath = os.path.join(dirpath, name)
                rel = os.path.relpath(lpath, local_dir).replace(os.sep, "/")
                pairs.append((lpath, join(path, check_path(rel, what=f"file under {local_dir!r}"))))
        targets = [self._full(rp) for _, rp in pairs]  # every target checked before the first write
        if self.is_local:
            for (lpath, _), full in zip(pairs, targets):
                with open(lpath, "rb") as src, _local_atomic_file(full) as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        elif pairs:
            self.fs.put([lp for lp, _ in pairs], targets)
        return sorted(rp for _, rp in pairs)

    def get_dir(self, path: str, local_dir: str | os.PathLike) -> str:
        """Download every object under ``path`` into ``local_dir`` (created); returns ``local_dir``."""
        local_dir = os.fspath(local_dir)
        files = self.walk(path)
        if not files:
            raise FileNotFoundError(errno.ENOENT, "no objects under this prefix", self.uri(path))
        # every key is checked before anything is created (module docstring)
        lpaths = [self._download_target(path, rel, local_dir) for rel in files]
        for lpath in lpaths:
            os.makedirs(os.path.dirname(lpath), exist_ok=True)
        self.fs.get([self._full(r) for r in files], lpaths)
        return local_dir

    def _download_target(self, prefix: str, rel: str, local_dir: str) -> str:
        """The local path under ``local_dir`` of the listed object ``rel`` of ``prefix``.

        ``ValueError`` naming the object if its key relative to ``prefix`` breaks the store's path
        rule (``..``, an empty or absolute part, a backslash): it would land outside ``local_dir``.
        """
        sub = rel[len(prefix) + 1:] if rel != prefix else posixpath.basename(rel)
        shown = f"{self.url.rstrip('/')}/{rel}"
        check_path(sub, what=f"object {shown!r}: key relative to {self.uri(prefix)!r}")
        lpath = os.path.join(local_dir, *sub.split("/"))
        if not _within(os.path.abspath(lpath), os.path.abspath(local_dir)):
            raise ValueError(f"object {shown!r} would be written to {lpath}, outside {local_dir}; refused")
        return lpath

    def delete(self, path: str, *, recursive: bool = False, missing_ok: bool = False) -> None:
        """Delete an object, or a whole prefix with ``recursive=True``.

        ``FileNotFoundError`` if nothing is there (unless ``missing_ok``); ``IsADirectoryError``
        for a directory / prefix without ``recursive``.
        """
        full = self._full(path)
        if not self.fs.exists(full):
            if missing_ok:
                return
            raise FileNotFoundError(errno.ENOENT, "nothing to delete", self.uri(path))
        if self.fs.isdir(full):
            if not recursive:
                raise IsADirectoryError(errno.EISDIR, "is a directory; pass recursive=True to delete it", self.uri(path))
            self.fs.rm(full, recursive=True)
        else:
            self.fs.rm_file(full)
        if self.is_local:
            # Like S3, where a prefix exists only while objects are under it.
            _prune_empty_dirs(os.path.dirname(full), stop=self._root)

    # ----------------------------------------------------------------------------- listing

    def exists(self, path: str) -> bool:
        """True if an object or a non-empty prefix exists at ``path``.

        On file://, a path that a symbolic link leads out of the store raises
        :class:`StoreEscapeError` (as every operation on it does) rather than answering.
        """
        return bool(self.fs.exists(self._full(path, allow_root=True)))

    def is_dir(self, path: str) -> bool:
        """True for a directory (file://) or a non-empty prefix (S3)."""
        return bool(self.fs.isdir(self._full(path, allow_root=True)))

    def list(self, prefix: str = "") -> list[str]:
        """Names (not paths) of the immediate children of ``prefix``, sorted; ``[]`` if it is absent.

        ``NotADirectoryError`` if ``prefix`` is an object.
        """
        full = self._full(prefix, allow_root=True)
        try:
            entries = self.fs.ls(full, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            if self.is_local and os.path.isfile(full):
                raise NotADirectoryError(errno.ENOTDIR, "is an object, not a prefix", self.uri(prefix)) from None
            return []
        if len(entries) == 1 and entries[0]["type"] == "file" and entries[0]["name"].rstrip("/").split("://")[-1] == full:
            raise NotADirectoryError(errno.ENOTDIR, "is an object, not a prefix", self.uri(prefix))
        names = {posixpath.basename(e["name"].rstrip("/")) for e in entries if self._inside(e["name"])}
        return sorted(n for n in names if n and not n.startswith(TMP_PREFIX))

    def walk(self, prefix: str = "") -> list[str]:
        """Store paths of every object under ``prefix`` (recursively), sorted; ``[]`` if absent.

        On file:// a symbolic link whose target leaves the store is skipped (and a linked directory
        outside it is not entered).
        """
        full = self._full(prefix, allow_root=True)
        if self.is_local:
            found = _local_find(full, os.path.realpath(self._root))
        else:
            try:
                found = self.fs.find(full)
            except FileNotFoundError:
                return []
        out = [self._rel(f) for f in found]
        return sorted(p for p in out if p and not posixpath.basename(p).startswith(TMP_PREFIX))

    def glob(self, pattern: str) -> list[str]:
        """Store paths matching a glob ``pattern`` relative to the root (``tasks/*/_READY``), sorted."""
        check_path(pattern, what="glob pattern")
        found = self.fs.glob(self._full(pattern))
        out = [self._rel(f) for f in found if self._inside(f)]
        return sorted(p for p in out if p and not posixpath.basename(p).startswith(TMP_PREFIX))

    def info(self, path: str) -> StoreInfo:
        """Size, modification time and kind of ``path``; ``FileNotFoundError`` if absent."""
        full = self._full(path, allow_root=True)
        try:
            raw = self.fs.info(full)
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, "no such object in the store", self.uri(path)) from None
        is_dir = raw.get("type") == "directory"
        mtime = raw.get("mtime", raw.get("LastModified", raw.get("last_modified")))
        if isinstance(mtime, _dt.datetime):
            if mtime.tzinfo is None:
                mtime = mtime.replace(tzinfo=_dt.timezone.utc)
            mtime = mtime.timestamp()
        return StoreInfo(path=path, size=int(raw.get("size") or 0), mtime=None if mtime is None else float(mtime), is_dir=is_dir)

    def mtime(self, path: str) -> float:
        """Modification time of the object at ``path`` (seconds since the epoch)."""
        info = self.info(path)
        if info.mtime is None:
            raise IsADirectoryError(errno.EISDIR, "an S3 prefix has no modification time; ask for an object", self.uri(path))
        return info.mtime

    # ----------------------------------------------------------------------------- interop

    def storage_options(self) -> dict[str, Any]:
        """The resolved fsspec storage options (for ``fsspec.open(store.uri(p), **opts)``)."""
        return {} if self.is_local else dict(self._options)

    def pyarrow_filesystem(self, *, explicit_credentials: bool = False) -> tuple[Any, str]:
        """``(pyarrow.fs.FileSystem, root path without scheme)`` for Ray Data / Ray Train.

        For S3: an ``S3FileSystem`` with the store's region and endpoint (as ``endpoint_override``
        + ``scheme``) and no keys: it resolves credentials through the AWS default chain
        (environment variables, web identity / IRSA, instance profile) in whichever process uses
        it, so it can be pickled into Ray tasks and checkpoints without carrying a secret. Paths
        given to Ray are ``<root>/<path>`` with no ``s3://``. For file://: a ``LocalFileSystem``
        and the absolute root directory.

        A store built with explicit ``key``/``secret``/``token`` raises ``ValueError``: its keys
        would travel in every pickle of the filesystem. Put them in the environment of every Ray
        process instead, or pass ``explicit_credentials=True`` for a filesystem that carries them,
        to be used in this process only and never handed to Ray.
        """
        import pyarrow.fs as pafs

        if self.is_local:
            return pafs.LocalFileSystem(), self._root
        opts = self._options
        kwargs: dict[str, Any] = {"region": opts.get("region") or "us-east-1"}
        endpoint = opts.get("endpoint_url")
        if endpoint:
            parsed = urlparse(endpoint if "://" in endpoint else "https://" + endpoint)
            kwargs["endpoint_override"] = parsed.netloc + parsed.path.rstrip("/")
            kwargs["scheme"] = parsed.scheme
        if opts.get("anon"):
            return pafs.S3FileSystem(anonymous=True, **kwargs), self._root
        if self._explicit_credentials:
            if not explicit_credentials:
                given = ", ".join(f"{k}=" for k in sorted(self._explicit_credentials))
                raise ValueError(
                    f"store {self.url} was given credentials explicitly ({given}); a pyarrow filesystem "
                    "carrying them would put them in every pickle sent to Ray. Set AWS_ACCESS_KEY_ID / "
                    "AWS_SECRET_ACCESS_KEY (/ AWS_SESSION_TOKEN) in the environment of every Ray process "
                    "(or use an instance role / IRSA) and build the store without them, or pass "
                    "explicit_credentials=True for a filesystem used in this process only"
                )
            kwargs.update({name: opts.get(key) for key, name in _PYARROW_CREDENTIALS.items() if opts.get(key)})
        return pafs.S3FileSystem(**kwargs), self._root


def as_store(store: "Store | str | None") -> Store:
    """Accept a :class:`Store`, a URL / path, or ``None`` (the default store)."""
    return store if isinstance(store, Store) else Store(store)


# ------------------------------------------------------------------------------------ helpers

#: Storage options that are credentials: never pickled unless given explicitly (module docstring).
_CREDENTIAL_OPTIONS = ("key", "secret", "token")

#: Store option -> ``pyarrow.fs.S3FileSystem`` argument, for explicit credentials only.
_PYARROW_CREDENTIALS = {"key": "access_key", "secret": "secret_key", "token": "session_token"}


def _within(real: str, real_root: str) -> bool:
    """True if the absolute path ``real`` is ``real_root`` or lies under it."""
    return real == real_root or real.startswith(real_root.rstrip("/") + "/")


def _local_find(top: str, real_root: str) -> list[str]:
    """Every file under ``top`` (or ``top`` itself, a file) whose real path stays in ``real_root``.

    Symbolic links are followed only while they stay inside ``real_root``; a linked directory
    outside is not entered, and one that leads back to its own ancestor (a loop) is not entered
    again. Nothing under a missing ``top``.
    """
    if os.path.isfile(top):
        return [top] if _within(os.path.realpath(top), real_root) else []
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        here = os.path.realpath(dirpath)
        dirnames[:] = sorted(d for d in dirnames if _enterable(os.path.join(dirpath, d), here, real_root))
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path) or _within(os.path.realpath(path), real_root):
                found.append(path)
    return found


def _enterable(path: str, real_parent: str, real_root: str) -> bool:
    """For :func:`_local_find`: a directory entry stays inside the store and is not a link to an ancestor."""
    if not os.path.islink(path):
        return True
    real = os.path.realpath(path)
    return _within(real, real_root) and not _within(real_parent, real)



def _resolve_s3_options(options: dict[str, Any]) -> dict[str, Any]:
    """Fill endpoint / credentials / region from the AWS environment where not given explicitly."""
    opts = dict(options)
    env = os.environ

    def pick(key: str, *env_names: str) -> None:
        if opts.get(key) is None:
            for name in env_names:
                if env.get(name):
                    opts[key] = env[name]
                    return
            opts.pop(key, None)

    pick("endpoint_url", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
    if not opts.get("anon"):
        pick("key", "AWS_ACCESS_KEY_ID")
        pick("secret", "AWS_SECRET_ACCESS_KEY")
        pick("token", "AWS_SESSION_TOKEN")
    pick("region", "AWS_REGION", "AWS_DEFAULT_REGION")
    return opts


@contextlib.contextmanager
def _local_atomic_file(full: str) -> Iterator[IO[bytes]]:
    """Yield a temp file next to ``full``; fsync + ``os.replace`` it over ``full`` on success."""
    directory, base = os.path.split(full)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{base}-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, full)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _prune_empty_dirs(directory: str, *, stop: str) -> None:
    """Remove ``directory`` and its empty parents, up to (not including) ``stop``."""
    stop = os.path.abspath(stop)
    directory = os.path.abspath(directory)
    while directory != stop and directory.startswith(stop + os.sep):
        try:
            os.rmdir(directory)
        except OSError:  # not empty (or already gone / raced): stop here
            return
        directory = os.path.dirname(directory)


def _local_create_exclusive(full: str, data: bytes) -> bool:
    """Conditional create on a local filesystem: write a complete temp file, then hard-link it."""
    directory, base = os.path.split(full)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f"{TMP_PREFIX}{base}-{uuid.uuid4().hex}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, full)
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
        # No hard links here: exclusive create, then write (a reader may briefly see it short).
        try:
            out = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(out, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _content_version(data: bytes) -> str:
    """The version of a local object: the SHA-256 of its content."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _local_replace_if_match(full: str, data: bytes, expected: str, uri: str) -> None:
    """Compare-and-swap on a local file: under an exclusive ``flock`` of the current file, compare
    its content's version with ``expected`` and ``os.replace`` the complete new content over it.

    Each write makes a new file, so a writer that waited for the lock of a file that has since been
    replaced sees the path name another file and starts again on that one.
    """
    deadline = time.monotonic() + CAS_LOCK_TIMEOUT
    while True:
        try:
            fd = os.open(full, os.O_RDWR)  # a writable descriptor: NFS locks need one
        except PermissionError:
            fd = os.open(full, os.O_RDONLY)
        except (FileNotFoundError, IsADirectoryError):
            raise ConflictError(f"{uri}: there is no object (it was deleted?), expected version {expected}") from None
        try:
            pause = 0.001
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        held = f"another writer held the lock for over {CAS_LOCK_TIMEOUT:g}s"
                        raise TimeoutError(errno.ETIMEDOUT, held, uri) from None
                    time.sleep(pause)
                    pause = min(pause * 2, 0.05)
            try:
                now = os.stat(full)
            except FileNotFoundError:
                raise ConflictError(f"{uri}: the object was deleted, expected version {expected}") from None
            held = os.fstat(fd)
            if (now.st_ino, now.st_dev) != (held.st_ino, held.st_dev):
                continue  # replaced while we waited: lock the file that is there now
            with os.fdopen(os.dup(fd), "rb") as f:
                current = f.read()
            if _content_version(current) != expected:
                raise ConflictError(f"{uri}: it is no longer at version {expected} (conditional write lost)")
            with _local_atomic_file(full) as f:
                f.write(data)
            return
        finally:
            os.close(fd)  # releases the lock


async def _s3_get_versioned(fs: Any, bucket: str, key: str) -> tuple[bytes, str]:
    """One GET: the object's content and its ETag."""
    resp = await fs._call_s3("get_object", Bucket=bucket, Key=key)
    try:
        return await resp["Body"].read(), resp["ETag"]
    finally:
        resp["Body"].close()


def _s3_condition_failed(exc: BaseException) -> bool:
    """True if an S3 error says a conditional PUT's condition did not hold.

    412 ``PreconditionFailed`` (the ETag differs, or ``If-None-Match: *`` found an object), 409
    ``ConditionalRequestConflict`` (another conditional write to the key was in flight) and 404
    ``NoSuchKey`` (``If-Match`` on an object that is gone).
    """
    if isinstance(exc, (FileExistsError, FileNotFoundError)):
        return True
    cause = exc.__cause__
    response = getattr(cause, "response", None) or {}
    code = str((response.get("Error") or {}).get("Code", ""))
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey") or status in (409, 412)


__all__ = [
    "CAS_LOCK_TIMEOUT",
    "ConflictError",
    "DEFAULT_STORE_DIRNAME",
    "RAY_JOB_ENV",
    "RayJobDriver",
    "STORE_ENV",
    "Store",
    "StoreInfo",
    "StoreEscapeError",
    "StoreLocationError",
    "as_store",
    "check_path",
    "check_store_location",
    "default_store_url",
    "join",
    "ray_job_driver",
]
