"""Living beside the tools ZFS users already run (real ZFS): sanoid, zfs-auto-snapshot,
syncoid and zrepl, each played by the very ``zfs`` commands it runs, while dsg-storage
transactions are open. What a user sees afterwards: snapshot names and contents, holds,
bookmarks, leftovers, ``status``, and that the next begin+commit works.
(docs/archive/0014-living-beside-other-tools.md has the reasoning.)"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dsg_storage import DatasetBusyError, Queue, Repository

from .cli import SRC, dsg, dsg_json, with_src
from .conftest import Sandbox
from .test_transactions import OWNER, files, zfs_prop

OLD = {"data.csv": "committed"}


def zfs(*args: str) -> None:
    subprocess.run(["zfs", *args], check=True, capture_output=True, text=True)


@contextlib.contextmanager
def mounted(snapshot: str, where: Path) -> Iterator[Path]:
    """``snapshot`` mounted read-only at ``where`` for a look at what it shows."""
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "zfs", "-o", "ro", snapshot, str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def shows(snapshot: str, tmp_path: Path) -> dict[str, str]:
    with mounted(snapshot, tmp_path / "look" / snapshot.replace("/", "_").replace("@", "_")) as path:
        return files(path)


def repository(sandbox: Sandbox, name: str = "survey") -> Repository:
    repo = Repository(f"{sandbox.dataset}/{name}", zfs=sandbox.zfs)
    with repo.begin(mountpoint=str(sandbox.mount_dir / name), owner=OWNER, mode="0750") as tx:
        Path(tx.path, "data.csv").write_text("committed")
    return repo


def ours(sandbox: Sandbox, repo: Repository) -> list[str]:
    leaf = repo.name.removeprefix(sandbox.dataset + "/")
    return [n for n in sandbox.datasets() if n.startswith(leaf)]


def assert_nothing_of_ours_left(sandbox: Sandbox, repo: Repository) -> None:
    """No temporary dataset and no base snapshot of ours is left."""
    assert not [n for n in ours(sandbox, repo) if ".dsg-" in n or "@dsg-base-" in n], ours(sandbox, repo)


def begin_and_commit_again(repo: Repository, content: str) -> None:
    with repo.begin() as tx:
        Path(tx.path, "data.csv").write_text(content)
    assert files(repo.status().mountpoint or "") == {"data.csv": content}


def test_sanoid_snapshot_taken_during_a_transaction_stays_where_sanoid_finds_it(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    repo = repository(sandbox)
    tx = repo.begin()
    Path(tx.path, "data.csv").write_text("new")
    autosnap = "autosnap_2026-12-03_10:00:00_hourly"
    zfs("snapshot", f"{repo.name}@{autosnap}")  # sanoid's hourly take, mid-transaction
    tx.commit("new data")

    # Under the repository's name, where sanoid looks for it (and prunes it later),
    # showing what the repository held when it was taken: the committed content.
    assert shows(f"{repo.name}@{autosnap}", tmp_path) == OLD
    assert files(sandbox.mount_dir / "survey") == {"data.csv": "new"}
    assert_nothing_of_ours_left(sandbox, repo)  # no leak
    status = dsg_json("status", repo.name, allow=sandbox.dataset)
    assert status["leftovers"] == [] and autosnap in status["recovery_note"]
    zfs("destroy", f"{repo.name}@{autosnap}")  # sanoid's prune works
    begin_and_commit_again(repo, "newer")


def test_a_recursive_snapshot_of_the_parent_never_shows_uncommitted_work_under_the_repositorys_name(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    repo = repository(sandbox)
    tx = repo.begin()
    Path(tx.path, "data.csv").write_text("work in progress")
    zfs("snapshot", "-r", f"{sandbox.dataset}@nightly")  # zfs-auto-snapshot/sanoid with recursive = yes
    Path(tx.path, "data.csv").write_text("finished")
    tx.commit()

    assert shows(f"{repo.name}@nightly", tmp_path) == OLD  # never "work in progress"
    assert files(sandbox.mount_dir / "survey") == {"data.csv": "finished"}
    assert_nothing_of_ours_left(sandbox, repo)
    assert "uncommitted" in (repo.status().recovery_note or "")
    begin_and_commit_again(repo, "later")


def test_rollback_after_a_recursive_snapshot_of_the_parent_does_not_wedge(sandbox: Sandbox, tmp_path: Path) -> None:
    repo = repository(sandbox)
    tx = repo.begin()
    Path(tx.path, "data.csv").write_text("abandoned")
    zfs("snapshot", "-r", f"{sandbox.dataset}@nightly")
    tx.rollback()  # was: exit 5 after 39 s, the transaction stuck in 'aborting'

    assert repo.pending() == []
    assert shows(f"{repo.name}@nightly", tmp_path) == OLD  # the repository's own stays, for its tool
    assert_nothing_of_ours_left(sandbox, repo)
    begin_and_commit_again(repo, "next")


def test_zrepl_hold_and_bookmark_on_a_snapshot_taken_during_a_transaction_never_break_the_commit(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    repo = repository(sandbox)
    tx = repo.begin()
    Path(tx.path, "data.csv").write_text("new")
    snap = f"{repo.name}@zrepl_20261203_100000_000"
    zfs("snapshot", snap)  # zrepl's snapshotter, then its replication cursor and step hold
    zfs("bookmark", snap, f"{repo.name}#zrepl_CURSOR_G_1")
    zfs("hold", "zrepl_STEP_J_push", snap)
    tx.commit()
    assert files(sandbox.mount_dir / "survey") == {"data.csv": "new"}

    # The old head stays while zrepl holds its snapshot; status says what keeps it.
    status = dsg_json("status", repo.name, allow=sandbox.dataset)
    (old,) = status["leftovers"]
    assert "zrepl_STEP_J_push" in status["kept"][old]
    assert shows(f"{repo.name}@zrepl_20261203_100000_000", tmp_path) == OLD  # by name, on the repository
    begin_and_commit_again(repo, "meanwhile")  # never wedged

    zfs("release", "zrepl_STEP_J_push", f"{old}@zrepl_20261203_100000_000")
    repo.recover()  # the next call: the snapshot is free, but the bookmark is zrepl's
    status = dsg_json("status", repo.name, allow=sandbox.dataset)
    assert status["leftovers"] == [old] and "#zrepl_CURSOR_G_1" in status["kept"][old]
    zfs("destroy", f"{old}#zrepl_CURSOR_G_1")
    repo.recover()
    assert dsg_json("status", repo.name, allow=sandbox.dataset)["leftovers"] == []
    assert_nothing_of_ours_left(sandbox, repo)


def test_a_held_snapshot_of_the_uncommitted_workspace_refuses_the_commit_until_released(sandbox: Sandbox) -> None:
    repo = repository(sandbox)
    tx = repo.begin()
    Path(tx.path, "data.csv").write_text("new")
    zfs("snapshot", "-r", f"{sandbox.dataset}@zrepl_x")
    zfs("hold", "keep", f"{tx.dataset}@zrepl_x")
    with pytest.raises(DatasetBusyError, match="held by keep"):
        tx.commit()
    assert [p.state for p in repo.pending()] == ["open"]  # nothing changed: still open, in place
    assert files(tx.path) == {"data.csv": "new"} and files(sandbox.mount_dir / "survey") == OLD
    zfs("release", "keep", f"{tx.dataset}@zrepl_x")
    tx.commit()
    assert files(sandbox.mount_dir / "survey") == {"data.csv": "new"}


def test_rollback_with_a_held_snapshot_of_the_workspace_keeps_it_aside_and_never_blocks_a_begin(
    sandbox: Sandbox,
) -> None:
    repo = repository(sandbox)
    tx = repo.begin()
    zfs("snapshot", "-r", f"{sandbox.dataset}@backup")
    zfs("hold", "backup-tool", f"{tx.dataset}@backup")
    tx.rollback()
    gone = tx.dataset.replace(".dsg-ws-", ".dsg-gone-")
    base = f"{repo.name}@dsg-base-{tx.id}"  # its origin: kept with it, and noted for retrying
    status = dsg_json("status", repo.name, allow=sandbox.dataset)
    assert status["pending"] == [] and status["leftovers"] == [gone, base]
    assert "backup-tool" in status["kept"][gone] and "not destroyed yet" in status["kept"][base]
    begin_and_commit_again(repo, "next")  # not in the way of any transaction
    zfs("release", "backup-tool", f"{gone}@backup")
    repo.recover()
    assert_nothing_of_ours_left(sandbox, repo)


def test_zfs_auto_snapshot_skips_the_temporaries_and_sees_the_repository_as_its_owner_set_it(
    sandbox: Sandbox,
) -> None:
    repo = repository(sandbox)
    zfs("set", "com.sun:auto-snapshot:hourly=false", repo.name)  # the owner's, as any user property
    zfs("set", "com.sun:auto-snapshot=true", repo.name)
    tx = repo.begin()
    assert zfs_prop(tx.dataset, "com.sun:auto-snapshot") == "false"  # zfs-auto-snapshot skips it
    tx.commit()
    assert zfs_prop(repo.name, "com.sun:auto-snapshot") == "true"  # the owner's own values, kept
    assert zfs_prop(repo.name, "com.sun:auto-snapshot:hourly") == "false"
    new = Repository(f"{sandbox.dataset}/fresh", zfs=sandbox.zfs)
    with new.begin(mountpoint=str(sandbox.mount_dir / "fresh"), owner=OWNER) as init:
        assert zfs_prop(init.dataset, "com.sun:auto-snapshot") == "false"
    assert zfs_prop(new.name, "com.sun:auto-snapshot") == "-"  # unset: inherited from nowhere


def hook_script(tmp_path: Path) -> Path:
    """``dsg-storage snapshot-ok`` as a snapshot tool runs its hook: an executable, the
    targets in its environment."""
    script = tmp_path / "dsg-storage-snapshot-ok"
    script.write_text(f'#!/bin/sh\nexec env PYTHONPATH={SRC} {sys.executable} -m dsg_storage snapshot-ok "$@"\n')
    script.chmod(0o755)
    return script


def sanoid(tmp_path: Path, dataset: str) -> subprocess.CompletedProcess[str]:
    """sanoid itself (the image's package), hourly snapshots of ``dataset`` with the hook."""
    conf = tmp_path / "sanoid"
    conf.mkdir(exist_ok=True)
    shutil.copy("/usr/share/sanoid/sanoid.defaults.conf", conf / "sanoid.defaults.conf")
    (conf / "sanoid.conf").write_text(
        f"[{dataset}]\n\tuse_template = repositories\n\n"
        "[template_repositories]\n\thourly = 24\n\tdaily = 0\n\tmonthly = 0\n\tyearly = 0\n"
        "\tautosnap = yes\n\tautoprune = yes\n\tscript_timeout = 120\n"
        f"\tpre_snapshot_script = {hook_script(tmp_path)}\n\tno_inconsistent_snapshot = yes\n"
    )
    return subprocess.run(
        [
            "sanoid",
            "--configdir",
            str(conf),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--run-dir",
            str(tmp_path),
            "--take-snapshots",
            "--verbose",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def autosnaps(sandbox: Sandbox) -> list[str]:
    return [n for n in sandbox.datasets() if "@autosnap_" in n]


def test_sanoid_with_the_hook_skips_a_repository_while_a_transaction_is_open(sandbox: Sandbox, tmp_path: Path) -> None:
    repo = repository(sandbox)
    tx = repo.begin()
    Path(tx.path, "data.csv").write_text("new")
    ran = sanoid(tmp_path, repo.name)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert autosnaps(sandbox) == [], ran.stdout  # skipped: nothing of the transaction's is caught
    tx.commit()
    ran = sanoid(tmp_path, repo.name)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    (taken,) = autosnaps(sandbox)
    assert taken.startswith("survey@autosnap_") and taken.endswith("_hourly")
    assert shows(f"{sandbox.dataset}/{taken}", tmp_path) == {"data.csv": "new"}


def test_zrepl_pre_snapshot_hook_skips_a_repository_while_a_transaction_is_open(sandbox: Sandbox) -> None:
    """zrepl is not packaged for the image: its snapshotter's steps, played by its commands
    (a ``type: command`` pre-snapshot hook with ``err_is_fatal: true``, then ``zfs snapshot``)."""
    repo = repository(sandbox)
    hook = {**with_src(), "ZREPL_FS": repo.name, "ZREPL_HOOKTYPE": "pre_snapshot", "ZREPL_DRYRUN": "false"}

    def zrepl_snapshot(name: str) -> bool:
        if dsg("snapshot-ok", env=hook).returncode != 0:
            return False  # err_is_fatal: this filesystem's snapshot is not taken
        zfs("snapshot", f"{repo.name}@{name}")
        return True

    tx = repo.begin()
    assert not zrepl_snapshot("zrepl_20261203_110000_000")
    tx.commit()
    assert zrepl_snapshot("zrepl_20261203_111000_000")
    assert [n for n in sandbox.datasets() if "@zrepl_" in n] == ["survey@zrepl_20261203_111000_000"]


def test_a_base_a_replicator_holds_is_retried_by_recovery_on_any_host(sandbox: Sandbox, tmp_path: Path) -> None:
    """syncoid --no-sync-snap and zrepl replicate and hold the newest snapshot, which
    during a transaction is its base: once released, any host's next call removes it,
    not only the queue of the host that committed."""
    repo = repository(sandbox)
    for finish in ("commit", "rollback"):
        tx = repo.begin()
        base = f"{repo.name}@dsg-base-{tx.id}"
        zfs("hold", "syncoid_sync", base)
        getattr(tx, finish)()
        status = dsg_json("status", repo.name, allow=sandbox.dataset)
        assert base in status["leftovers"] and "not destroyed yet" in status["kept"][base]
        begin_and_commit_again(repo, f"after {finish}")  # never in the way
        zfs("release", "syncoid_sync", base)
        elsewhere = Repository(repo.name, zfs=sandbox.zfs, queue=Queue(tmp_path / f"{finish}.sqlite"))
        elsewhere.recover()  # another host: its own (empty) queue
        assert dsg_json("status", repo.name, allow=sandbox.dataset)["leftovers"] == []
        assert_nothing_of_ours_left(sandbox, repo)
