"""Fixtures of the scheduler tests (helpers live in ``tests/support/sched_helpers.py``)."""

from __future__ import annotations

import pytest

from cl_platform.store import Store
from tests.support.sched_helpers import Harness


@pytest.fixture
def harness(store, tmp_path) -> Harness:
    return Harness(store, tmp_path)


@pytest.fixture
def file_harness(tmp_path) -> Harness:
    return Harness(Store(f"file://{tmp_path}/store"), tmp_path)




@pytest.fixture(scope="session")
def digits_base(digits_store, tmp_path_factory) -> str:
    """Root of a local store with the digits suite and the session's briefly pre-trained base, and
    no tasks under ``tasks/``: the suite's tasks live in the store ``<root>/source``, and tests
    publish copies of them (``copy_digits_task``)."""
    import os
    import shutil

    root = tmp_path_factory.mktemp("sched_digits") / "store"
    shutil.copytree(digits_store, root)
    os.makedirs(root / "source")
    shutil.move(str(root / "tasks"), str(root / "source" / "tasks"))
    return str(root)


@pytest.fixture
def ray_tmp():
    """A short private TMPDIR for a test's schedulers and their embedded Ray; every process still
    carrying it at the end is killed (only processes this test started carry it)."""
    import shutil
    import tempfile

    from tests.support.sched_helpers import kill_attributable

    root = tempfile.mkdtemp(prefix="cls", dir="/tmp")
    try:
        yield root
    finally:
        kill_attributable(root)
        shutil.rmtree(root, ignore_errors=True)
