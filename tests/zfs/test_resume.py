"""Work that resumes by itself: with ZED running and our zedlet installed, a snapshot
queued while its pool was exported is taken when the pool is imported, with nobody
calling ``gc``. The pool is the test's own (file-backed, destroyed at the end), so
dsgtest is never exported."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dsg_storage import Repository

from .test_transactions import OWNER

DEADLINE = 90.0  # seconds for ZED to see the import and the zedlet to finish (emulated VM)


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=False, env=env)


def wait_for(condition: str, check: object, deadline: float = DEADLINE) -> None:
    """Poll ``check()`` (a real condition) until it is true, at most ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while not check():  # type: ignore[operator]
        assert time.monotonic() < end, f"{condition}: not within {deadline:g}s"
        time.sleep(0.25)


@pytest.fixture
def own_pool(tmp_path: Path) -> Iterator[str]:
    name = f"dsgzed{secrets.token_hex(3)}"
    disk = tmp_path / "pool.img"
    with open(disk, "wb") as handle:
        handle.truncate(128 << 20)
    created = run("zpool", "create", "-o", "cachefile=none", "-m", "none", name, str(disk))
    assert created.returncode == 0, created.stderr
    yield name
    if run("zpool", "list", name).returncode != 0:
        run("zpool", "import", "-d", str(tmp_path), name)
    assert run("zpool", "destroy", "-f", name).returncode == 0


@pytest.fixture
def zed(tmp_path: Path) -> Iterator[Path]:
    """ZED running with a private zedlet directory, pid file and state file."""
    executable = shutil.which("zed")
    assert executable, "zed is missing: the VM image has zfs-zed"
    zedlets = tmp_path / "zed.d"
    zedlets.mkdir()
    pid_file = tmp_path / "zed.pid"
    log = open(tmp_path / "zed.log", "w")  # noqa: SIM115 (closed below)
    daemon = subprocess.Popen(
        [executable, "-F", "-v", "-d", str(zedlets), "-p", str(pid_file), "-s", str(tmp_path / "zed.state")],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for("zed wrote its pid file", lambda: pid_file.exists() or daemon.poll() is not None, 30)
        assert daemon.poll() is None, f"zed exited: {(tmp_path / 'zed.log').read_text()}"
        yield zedlets
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        log.close()


def test_a_snapshot_queued_while_the_pool_is_exported_is_taken_on_import_by_zed(
    own_pool: str, zed: Path, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "DSG_STORAGE_QUEUE": str(tmp_path / "queue.sqlite"),
        "DSG_STORAGE_LOCK_DIR": str(tmp_path / "locks"),
    }
    cli = [sys.executable, "-m", "dsg_storage", "--json", "--allow", own_pool]
    installed = run(*cli, "install-hooks", "--zedlet-dir", str(zed), env=env)
    assert installed.returncode == 0, installed.stderr
    assert json.loads(installed.stdout)["installed"] == [str(zed / "pool_import-dsg-storage.sh")]

    repo = Repository(f"{own_pool}/survey", allow=own_pool)
    with repo.begin(mountpoint=str(tmp_path / "survey"), owner=OWNER, mode="0750") as tx:
        Path(tx.path, "a.txt").write_text("a")
    assert run("zpool", "export", own_pool).returncode == 0

    queued = run(*cli, "snapshot", repo.name, "--name", "while-away", "--queue", env=env)
    assert queued.returncode == 0, queued.stderr
    assert json.loads(queued.stdout)["queued"]["state"] == "pending"

    imported = run("zpool", "import", "-d", str(tmp_path), own_pool)
    assert imported.returncode == 0, imported.stderr

    def taken() -> bool:
        listed = run("zfs", "list", "-H", "-t", "snapshot", "-o", "name", "-d", "1", repo.name)
        return f"{repo.name}@while-away" in listed.stdout.split()

    wait_for(f"the queued snapshot {repo.name}@while-away (zed log: {tmp_path / 'zed.log'})", taken)
    props = run(
        "zfs", "get", "-H", "-o", "value", "dsg-storage:queue-id,dsg-storage:requested", f"{repo.name}@while-away"
    )
    queue_id, requested = props.stdout.split()
    assert queue_id == str(json.loads(queued.stdout)["queued"]["id"]) and requested.startswith("20")

    def marked_done() -> bool:
        items = json.loads(run(*cli, "queue", "list", env=env).stdout)
        return [i["state"] for i in items] == ["done"]

    wait_for("the queue item marked done", marked_done, 30)
