"""The architecture of docs/architecture.md holds: import layers, digits confined to its suite,
entry points without path edits, no citations of documents outside the repository."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cl_platform"


def _py_files(*dirs: Path):
    for d in dirs:
        yield from sorted(d.rglob("*.py"))


def test_import_layers_hold():
    """`lint-imports` with the contracts of pyproject.toml (layers, and no import of the digits suite outside it)."""
    exe = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(exe), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in proc.stdout


def test_digits_appears_only_in_its_suite_and_the_registry():
    outside = [p.relative_to(ROOT).as_posix() for p in _py_files(PACKAGE)
               if "suites" not in p.relative_to(PACKAGE).parts[:1] and re.search("digits", p.read_text(), re.I)]
    assert outside == [], f"modules outside cl_platform/suites/ mention digits: {outside}"


def test_entry_points_do_not_edit_sys_path():
    dirs = [PACKAGE, ROOT / "jobs", ROOT / "sweeps", ROOT / "benchmarks", ROOT / "infra"]
    edits = [p.relative_to(ROOT).as_posix() for p in _py_files(*dirs) if "sys.path.insert" in p.read_text()]
    assert edits == []


def test_no_citation_of_documents_outside_the_repository():
    cited = [p.relative_to(ROOT).as_posix() for p in _py_files(PACKAGE, ROOT / "jobs", ROOT / "sweeps", ROOT / "tests")
             if "DESIGN.md" in p.read_text() and p.name != os.path.basename(__file__)]
    assert cited == []
    assert (ROOT / "docs" / "architecture.md").is_file()
