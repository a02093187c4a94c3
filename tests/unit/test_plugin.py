"""dsg_storage.testing where ZFS is missing: another project's tests fail, saying how to run them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "tests" / "sample_project"


def run_sample_without_zfs(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "pytest", "-q", *args]
    if Path("/dev/zfs").exists():  # inside the VM: ZFS is there, but not for an unprivileged user
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(argv, cwd=SAMPLE, env=env, capture_output=True, text=True, check=False)


def test_the_sample_project_fails_loudly_without_zfs() -> None:
    result = run_sample_without_zfs()
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "2 errors" in out and "skipped" not in out  # an error at setup, before the test body
    assert "real-ZFS tests cannot run:" in out
    assert "dsg-storage-testpool run -- python3 -m pytest" in out


def test_the_plugin_stays_off_unless_asked_for() -> None:
    result = run_sample_without_zfs("-p", "no:dsg_storage.testing", "-o", "addopts=")
    out = result.stdout + result.stderr
    # Without the plugin the fixtures do not exist: pytest says so, instead of running anything.
    assert result.returncode == 1 and "fixture 'repository' not found" in out, out
