"""The layout most users have, an explicit mountpoint (``tank/data/survey`` at
``/srv/survey``), on real ZFS: commit needs no ``zfs`` command and few sync tasks, and
nothing uncommitted ever shows at the repository's path, also across an import (what a
reboot does)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from dsg_storage import Repository
from dsg_storage.zfs.host import BoundaryStep

from .conftest import Sandbox
from .test_crash_safety import export_and_import
from .test_transactions import OWNER, files, owner_mode


def prop(dataset: str, name: str) -> tuple[str, str]:
    """(value, source) as ``zfs get`` reports them."""
    out = subprocess.run(
        ["zfs", "get", "-H", "-o", "value,source", name, dataset], capture_output=True, text=True, check=True
    )
    value, source = out.stdout.rstrip("\n").split("\t")
    return value, source


def recording(sandbox: Sandbox) -> tuple[list[BoundaryStep], Callable[[], None]]:
    """The boundary's changes from now on, and a function that stops recording."""
    seen: list[BoundaryStep] = []
    sandbox.zfs.steps.observer = seen.append

    def stop() -> None:
        sandbox.zfs.steps.observer = None

    return seen, stop


def sync_tasks(steps: list[BoundaryStep]) -> list[str]:
    return [step.op for step in steps if step.syncs]


def check_commit_path(sandbox: Sandbox, repo: Repository, mnt: Path) -> tuple[list[str], list[str]]:
    """Init then sync begin+commit, each with a file changed; the sync tasks of each."""
    steps, stop = recording(sandbox)
    with repo.begin(mountpoint=str(mnt), owner=OWNER, mode="0750") as tx:
        Path(tx.path, "a.txt").write_text("one")
    init = sync_tasks(steps)
    steps.clear()
    with repo.begin() as tx:
        Path(tx.path, "a.txt").write_text("two")
    sync = sync_tasks(steps)
    stop()
    assert files(mnt) == {"a.txt": "two"}
    assert owner_mode(mnt) == (*OWNER, 0o750)
    assert sandbox.mounts()[repo.name] == [str(mnt)]
    return init, sync


def test_explicit_layout_commits_with_no_zfs_command_and_at_most_six_sync_tasks(sandbox: Sandbox) -> None:
    repo = Repository(f"{sandbox.dataset}/survey", zfs=sandbox.zfs)
    mnt = sandbox.mount_dir / "survey"
    init, sync = check_commit_path(sandbox, repo, mnt)
    assert "set mountpoint" not in init + sync and "set" not in init + sync  # the zfs command's steps
    assert len(init) <= 4, init
    assert len(sync) <= 6, sync
    assert prop(repo.name, "mountpoint") == (str(mnt), "local")
    assert prop(repo.name, "zoned")[0] == "off" and prop(repo.name, "zoned")[1] != "local"


def test_inherited_layout_commits_with_as_few_sync_tasks(sandbox: Sandbox) -> None:
    parent = f"{sandbox.dataset}/data"
    base = sandbox.mount_dir / "data"
    subprocess.run(["zfs", "create", "-o", f"mountpoint={base}", parent], check=True)
    repo = Repository(f"{parent}/survey", zfs=sandbox.zfs)
    init, sync = check_commit_path(sandbox, repo, base / "survey")
    assert len(init) <= 4, init
    assert len(sync) <= 6, sync
    assert prop(repo.name, "mountpoint") == (str(base / "survey"), "inherited from " + parent)


def test_an_open_transaction_never_shows_at_the_repository_path_across_an_import(
    exclusive_pool: None, sandbox: Sandbox
) -> None:
    repo = Repository(f"{sandbox.dataset}/survey", zfs=sandbox.zfs)
    mnt = sandbox.mount_dir / "survey"
    with repo.begin(mountpoint=str(mnt), owner=OWNER, mode="0750") as tx:
        Path(tx.path, "a.txt").write_text("committed")
    tx = repo.begin()
    Path(tx.path, "a.txt").write_text("uncommitted")
    workspace = tx.dataset
    assert prop(workspace, "mountpoint") == (str(mnt), "local")  # where it goes at commit

    export_and_import()  # ZFS mounts what it can, as at boot
    assert files(mnt) == {"a.txt": "committed"}
    assert sandbox.mounts() == {repo.name: [str(mnt)]}  # not the workspace

    repo.recover()  # puts the open workspace back at its path
    assert sandbox.mounts()[workspace] == [tx.path]
    assert files(Path(tx.path)) == {"a.txt": "uncommitted"}
    repo.transaction(tx.id).commit("after the import")
    assert files(mnt) == {"a.txt": "uncommitted"}

    export_and_import()  # the committed repository is ZFS's to mount now
    assert sandbox.mounts() == {repo.name: [str(mnt)]}
    assert files(mnt) == {"a.txt": "uncommitted"}
    assert owner_mode(mnt) == (*OWNER, 0o750)
