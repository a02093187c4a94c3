"""What the command line logs, now that logging is imported only with a first message:
``--verbose`` shows the ZFS steps, a warning shows without it, both as
``dsg_storage: <message>`` on stderr. Offline reads on a search path where a stand-in
``zpool`` finds nothing need no pool."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import dsg_storage

SRC = str(Path(dsg_storage.__file__).resolve().parents[1])
ZPOOL_STEP = re.compile(r"^dsg_storage: zpool import -d \S+: \d+ ms \(exit 0\)$", re.MULTILINE)


def run(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    zpool = bin_dir / "zpool"
    zpool.write_text("#!/bin/sh\nexit 0\n")  # no pool imported, none found
    zpool.chmod(0o755)
    (tmp_path / "search").mkdir(exist_ok=True)
    env = {"PYTHONPATH": SRC, "PATH": f"{bin_dir}:/usr/bin:/bin", "DSG_STORAGE_QUEUE": str(tmp_path / "q.sqlite")}
    return subprocess.run(
        [sys.executable, "-m", "dsg_storage", *argv, "--offline", "--search-path", str(tmp_path / "search"), "repos"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("verbose", [False, True])
def test_zfs_steps_are_logged_with_verbose_only(tmp_path: Path, verbose: bool) -> None:
    done = run(tmp_path, *(["--verbose"] if verbose else []))
    assert done.returncode == 4, done.stderr  # no pool found
    assert bool(ZPOOL_STEP.search(done.stderr)) is verbose, done.stderr
    assert "dsg-storage: no exported ZFS pool found" in done.stderr


def test_a_warning_is_logged_without_verbose(tmp_path: Path) -> None:
    cache = tmp_path / "cache.sqlite"
    done = run(tmp_path, "--cached", "--cache", str(cache))
    warning = f"dsg_storage: no exported ZFS pool found: {tmp_path / 'search'}:"
    assert any(line.startswith(warning) for line in done.stderr.splitlines()), done.stderr
    assert f"; serving cached reads from {cache}" in done.stderr
    assert not ZPOOL_STEP.search(done.stderr)
