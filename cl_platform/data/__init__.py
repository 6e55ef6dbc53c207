"""Task format, validation, Ray Data pipelines and collation.

Public API of the task format (see :mod:`cl_platform.data.task_format` for the layout and rules)::

    write_task(store, name, train, eval, *, spec_id, rows_per_file=..., overwrite=False) -> manifest
    write_stream(store, name, data, *, spec_id, rows_per_file=..., overwrite=False) -> manifest
    TaskWriter(store, name, *, spec_id, kind="task"|"stream", ...)   # incremental, constant memory
    read_task(store, name, *, vocab_size=None, image_token_ranges=None, pad_id=None, max_tokens=None,
              limits=None) -> Task
    read_stream(store, name, *, vocab_size=None, image_token_ranges=None, max_tokens=None, limits=None) -> Stream
    read_manifest(store, name, *, kind="task") -> dict
    manifest_digest(store, name, kind="task") -> str          # sha256 of manifest.json
    verify_dataset(store, name, digest, *, kind="task")        # raises TaskChangedError
    TaskLimits(...)                                           # bounds on one read (cl_platform.data.limits)
    list_ready_tasks(store) / list_ready_streams(store) -> list[str]
    ready_time(store, name, *, kind="task") -> float
    validate_name(name) -> name   (raises TaskValidationError)
"""

from cl_platform.data.errors import TaskChangedError, TaskValidationError
from cl_platform.data.limits import DEFAULT_LIMITS, TaskLimits
from cl_platform.data.task_format import (
    DEFAULT_ROWS_PER_FILE,
    MANIFEST,
    NAME_PATTERN,
    READY,
    SCHEMA_VERSION,
    Stream,
    Task,
    TaskWriter,
    dataset_dir,
    is_valid_name,
    list_ready_streams,
    list_ready_tasks,
    manifest_digest,
    read_manifest,
    read_stream,
    read_task,
    ready_time,
    validate_name,
    verify_dataset,
    write_stream,
    write_task,
)

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_ROWS_PER_FILE",
    "MANIFEST",
    "NAME_PATTERN",
    "READY",
    "SCHEMA_VERSION",
    "Stream",
    "Task",
    "TaskChangedError",
    "TaskLimits",
    "TaskValidationError",
    "TaskWriter",
    "dataset_dir",
    "is_valid_name",
    "list_ready_streams",
    "list_ready_tasks",
    "manifest_digest",
    "read_manifest",
    "read_stream",
    "read_task",
    "ready_time",
    "validate_name",
    "verify_dataset",
    "write_stream",
    "write_task",
]
