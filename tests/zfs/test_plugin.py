"""Another project's tests on real ZFS through our plugin, run from that project's directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .conftest import POOL

SAMPLE = Path(__file__).resolve().parents[1] / "sample_project"


def roots() -> set[str]:
    out = subprocess.run(
        ["zfs", "list", "-H", "-o", "name", "-d", "1", POOL], capture_output=True, text=True, check=True
    )
    return set(out.stdout.split()) - {POOL}


def test_the_sample_project_passes_on_real_zfs_and_cleans_up(worker_root: str, tmp_path: Path) -> None:
    before = roots()
    # Its own lock files: see test_harness (our shared lock already keeps exclusive tests out).
    locks = tmp_path / "locks"
    locks.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "2", "-o", f"dsgtest_lock_dir={locks}"],
        cwd=SAMPLE,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
    # Each of its workers made dsgtest/<its run>-gwN and destroyed it with everything below;
    # only our own run's workers may have appeared meanwhile.
    our_run = worker_root.rsplit("-", 1)[0]
    assert {r for r in roots() - before if not r.startswith(our_run + "-")} == set()
