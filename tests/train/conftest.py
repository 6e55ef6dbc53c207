"""A digits store with a quickly pre-trained base, shared by the sequence tests."""

import pytest

from cl_platform.store import Store


@pytest.fixture(scope="session")
def digits_store(tmp_path_factory) -> str:
    """Local store with the digits suite and a base model pre-trained for a few steps only."""
    from cl_platform.suites.digits.pretrain import PretrainConfig, ensure_base_model
    from cl_platform.suites.digits.publish import write_suite

    root = tmp_path_factory.mktemp("digits_store")
    store = Store(str(root))
    write_suite(store, log=lambda *_: None)
    ensure_base_model(store, PretrainConfig(steps=30, eval_per_digit=1, log_every=10), log=lambda *_: None)
    return str(root)


@pytest.fixture
def fresh_digits_store(digits_store, tmp_path) -> str:
    """A private copy of :func:`digits_store` (runs write into it)."""
    import shutil

    dst = tmp_path / "store"
    shutil.copytree(digits_store, dst)
    return str(dst)
