"""Work that resumes by itself: with our zedlet installed, a snapshot queued while its
pool was exported is taken when the pool is imported, with nobody calling ``gc``.

Two tests: one with ZED itself running (it needs the ``zed`` binary in the image), and
one where the test dispatches the kernel's real ``pool_import`` event to the zedlet the
way ZED does (``$ZEVENT_*`` variables, ZED's default PATH, nothing else in the
environment). The pool is the test's own (file-backed, destroyed at the end), so dsgtest
is never exported."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
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
def zed(tmp_path: Path) -> Iterator[tuple[Path, Callable[[], None]]]:
    """A private zedlet directory, and how to start ZED on it (with its own pid and state
    files) once the zedlet is installed: ZED reads its zedlet directory when it starts
    (and on SIGHUP), so an installation is followed by a (re)start, as in the README."""
    executable = shutil.which("zed")
    assert executable, "zed is missing in this VM image (testpool's build unpacks zfs-zed after the DKMS build)"
    zedlets = tmp_path / "zed.d"
    zedlets.mkdir()
    pid_file, zed_log = tmp_path / "zed.pid", tmp_path / "zed.log"
    started: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        with open(zed_log, "w") as log:
            daemon = subprocess.Popen(
                [executable, "-F", "-v", "-d", str(zedlets), "-p", str(pid_file), "-s", str(tmp_path / "zed.state")],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        started.append(daemon)
        wait_for("zed wrote its pid file", lambda: pid_file.exists() or daemon.poll() is not None, 30)
        assert daemon.poll() is None, f"zed exited: {zed_log.read_text()}"

    try:
        yield zedlets, start
    finally:
        for daemon in started:
            daemon.terminate()
            daemon.wait(timeout=30)


# What ZED gives a zedlet (zed(8)): the event's fields as ZEVENT_*, its PATH, nothing else.
ZED_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"


def pool_import_events(pool: str) -> list[int]:
    """The eids of the kernel's pool_import events for ``pool`` (``zpool events -v``)."""
    out = run("zpool", "events", "-v").stdout
    found = []
    for block in out.split("\n\n"):
        fields = {
            key.strip(): value.strip().strip('"')
            for key, sep, value in (line.partition("=") for line in block.splitlines())
            if sep
        }
        if fields.get("class") == "sysevent.fs.zfs.pool_import" and fields.get("pool") == pool:
            found.append(int(fields["eid"], 0))
    return found


def queue_snapshot_while_away(
    pool: str, zedlets: Path, tmp_path: Path, installed_hook: Callable[[], None] = lambda: None
) -> tuple[Repository, dict[str, str], list[str], int]:
    env = {
        **os.environ,
        "DSG_STORAGE_QUEUE": str(tmp_path / "queue.sqlite"),
        "DSG_STORAGE_LOCK_DIR": str(tmp_path / "locks"),
    }
    cli = [sys.executable, "-m", "dsg_storage", "--json", "--allow", pool]
    installed = run(*cli, "install-hooks", "--zedlet-dir", str(zedlets), env=env)
    assert installed.returncode == 0, installed.stderr
    assert json.loads(installed.stdout)["installed"] == [str(zedlets / "pool_import-dsg-storage.sh")]
    installed_hook()
    repo = Repository(f"{pool}/survey", allow=pool)
    with repo.begin(mountpoint=str(tmp_path / "survey"), owner=OWNER, mode="0750") as tx:
        Path(tx.path, "a.txt").write_text("a")
    assert run("zpool", "export", pool).returncode == 0
    queued = run(*cli, "snapshot", repo.name, "--name", "while-away", "--queue", env=env)
    assert queued.returncode == 0, queued.stderr
    item = json.loads(queued.stdout)["queued"]
    assert item["state"] == "pending"
    imported = run("zpool", "import", "-d", str(tmp_path), pool)
    assert imported.returncode == 0, imported.stderr
    return repo, env, cli, item["id"]


def assert_applied_by_the_hook(repo: Repository, env: dict[str, str], cli: list[str], item_id: int, log: str) -> None:
    def taken() -> bool:
        listed = run("zfs", "list", "-H", "-t", "snapshot", "-o", "name", "-d", "1", repo.name)
        return f"{repo.name}@while-away" in listed.stdout.split()

    wait_for(f"the queued snapshot {repo.name}@while-away ({log})", taken)
    props = run(
        "zfs", "get", "-H", "-o", "value", "dsg-storage:queue-id,dsg-storage:requested", f"{repo.name}@while-away"
    )
    queue_id, requested = props.stdout.split()
    assert queue_id == str(item_id) and requested.startswith("20")

    def marked_done() -> bool:
        items = json.loads(run(*cli, "queue", "list", env=env).stdout)
        return [i["state"] for i in items] == ["done"]

    wait_for("the queue item marked done", marked_done, 30)


def test_a_snapshot_queued_while_the_pool_is_exported_is_taken_on_import_by_zed(
    own_pool: str, zed: tuple[Path, Callable[[], None]], tmp_path: Path
) -> None:
    zedlets, start_zed = zed
    repo, env, cli, item_id = queue_snapshot_while_away(own_pool, zedlets, tmp_path, start_zed)
    assert_applied_by_the_hook(repo, env, cli, item_id, f"zed log: {tmp_path / 'zed.log'}")


def test_the_zedlet_run_as_zed_runs_it_on_the_import_event_applies_the_queue(own_pool: str, tmp_path: Path) -> None:
    zedlets = tmp_path / "zed.d"
    before = set(pool_import_events(own_pool))
    repo, env, cli, item_id = queue_snapshot_while_away(own_pool, zedlets, tmp_path)
    wait_for("the kernel's pool_import event", lambda: set(pool_import_events(own_pool)) - before, 30)
    (zedlet,) = zedlets.glob("pool_import-*.sh")
    event_env = {
        "ZEVENT_POOL": own_pool,
        "ZEVENT_SUBCLASS": "pool_import",
        "ZEVENT_CLASS": "sysevent.fs.zfs.pool_import",
        "PATH": ZED_PATH,
    }
    ran = subprocess.run([str(zedlet)], env=event_env, cwd="/", capture_output=True, text=True, check=False)
    assert ran.returncode == 0, ran.stderr
    assert_applied_by_the_hook(repo, env, cli, item_id, f"zedlet output: {ran.stdout} {ran.stderr}")


def test_the_zedlet_puts_an_open_workspace_back_after_the_pool_is_imported(own_pool: str, tmp_path: Path) -> None:
    """Explicit layout: ZFS does not mount a workspace at import (zoned=on); the zedlet's
    ``recover --pool`` does, with nobody calling dsg-storage."""
    zedlets = tmp_path / "zed.d"
    env = {**os.environ, "DSG_STORAGE_LOCK_DIR": str(tmp_path / "locks")}
    cli = [sys.executable, "-m", "dsg_storage", "--json", "--allow", own_pool]
    assert run(*cli, "install-hooks", "--zedlet-dir", str(zedlets), env=env).returncode == 0
    repo = Repository(f"{own_pool}/survey", allow=own_pool)
    mnt = tmp_path / "survey"
    with repo.begin(mountpoint=str(mnt), owner=OWNER, mode="0750") as tx:
        Path(tx.path, "a.txt").write_text("committed")
    tx = repo.begin()
    Path(tx.path, "a.txt").write_text("open")
    assert run("zpool", "export", own_pool).returncode == 0
    imported = run("zpool", "import", "-d", str(tmp_path), own_pool)
    assert imported.returncode == 0, imported.stderr
    assert not os.path.ismount(tx.path)  # ZFS mounted the repository only
    assert Path(mnt, "a.txt").read_text() == "committed"

    (zedlet,) = zedlets.glob("pool_import-*.sh")
    event_env = {"ZEVENT_POOL": own_pool, "ZEVENT_SUBCLASS": "pool_import", "PATH": ZED_PATH}
    ran = subprocess.run([str(zedlet)], env=event_env, cwd="/", capture_output=True, text=True, check=False)
    assert ran.returncode == 0, ran.stderr
    assert f"{repo.name}: {tx.id}: open workspace remounted at {tx.path}" in ran.stdout.splitlines(), ran.stdout
    assert os.path.ismount(tx.path) and Path(tx.path, "a.txt").read_text() == "open"
    assert Path(mnt, "a.txt").read_text() == "committed"

    again = run(*cli, "recover", "--pool", own_pool, env=env)  # nothing left to do
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {"pool": own_pool, "repositories": [{"repository": repo.name, "actions": []}]}
    repo.transaction(tx.id).commit("after the import")
    assert Path(mnt, "a.txt").read_text() == "open"
