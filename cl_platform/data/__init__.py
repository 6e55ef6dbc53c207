"""Task format, validation, Ray Data pipelines and collation.

Public API of the task format (see :mod:`cl_platform.data.task_format` for the layout and rules)::

    write_task(store, name, train, eval, *, spec_id, rows_per_file=..., overwrite=False) -> manifest
    write_stream(store, name, data, *, spec_id, rows_per_file=..., overwrite=False) -> manifest
    TaskWriter(store, name, *, spec_id, kind="task"|"stream", ...)   # incremental, constant memory
    read_task(store, name, *, vocab_size=None, image_token_ranges=None) -> Task
    read_stream(store, name, *, vocab_size=None, image_token_ranges=None) -> Stream
    read_manifest(store, name, *, kind="task") -> dict
    list_ready_tasks(store) / list_ready_streams(store) -> list[str]
    ready_time(store, name, *, kind="task") -> float
    validate_name(name) -> name   (raises TaskValidationError)
"""

from cl_platform.data.errors import TaskValidationError
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
    read_manifest,
    read_stream,
    read_task,
    ready_time,
    validate_name,
    write_stream,
    write_task,
)

__all__ = [
    "DEFAULT_ROWS_PER_FILE",
    "MANIFEST",
    "NAME_PATTERN",
    "READY",
    "SCHEMA_VERSION",
    "Stream",
    "Task",
    "TaskValidationError",
    "TaskWriter",
    "dataset_dir",
    "is_valid_name",
    "list_ready_streams",
    "list_ready_tasks",
    "read_manifest",
    "read_stream",
    "read_task",
    "ready_time",
    "validate_name",
    "write_stream",
    "write_task",
]
