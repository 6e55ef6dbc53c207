"""Helpers shared by the tests (``from tests.support import ...``); not collected as tests."""
