"""Pools written by dsg-storage 0.1.0 work with this version: states built here with the
``zfs`` command, property for property as 0.1.0 wrote them, are read, recovered and
committed. (The names and values are the on-disk contract; see names.py.)"""

from __future__ import annotations

import subprocess
from pathlib import Path

from dsg_storage import Repository

from .conftest import Sandbox
from .test_transactions import files, owner_mode

TX = "20261121T071530Z-3fa2c1"
EARLIER = "20261120T000000Z-aaaaaa"


def zfs(*args: str) -> None:
    subprocess.run(["zfs", *args], check=True, capture_output=True)


def props(*, tx: str, pattern: str, state: str, repo: str, path: str, mountpoint: str) -> list[str]:
    """``-o`` options for the record 0.1.0's begin wrote on a temporary dataset."""
    values = {
        "dsg-storage:state": state,
        "dsg-storage:inherits-mountpoint": "no",
        "dsg-storage:tx": tx,
        "dsg-storage:pattern": pattern,
        "dsg-storage:repository": repo,
        "dsg-storage:path": path,
        "dsg-storage:mountpoint": mountpoint,
        "dsg-storage:owner": "1000:1000",
        "dsg-storage:mode": "0750",
        "dsg-storage:begun": "2026-11-20T00:00:00+00:00",
    }
    return [arg for key, value in values.items() for arg in ("-o", f"{key}={value}")]


def repository_of_0_1(box: Sandbox, content: dict[str, str]) -> tuple[str, Path]:
    """A repository as 0.1.0's init commit left it: its record, committed; mounted at its
    mountpoint; one commit snapshot with the commit's properties."""
    repo, mnt = f"{box.dataset}/repo", box.mount_dir / "repo"
    zfs(
        "create",
        "-o",
        "atime=off",
        "-o",
        f"mountpoint={mnt}",
        *props(
            tx=EARLIER,
            pattern="init",
            state="committed",
            repo=repo,
            path=f"{mnt}.dsg-tx-{EARLIER}",
            mountpoint=str(mnt),
        ),
        "-o",
        "dsg-storage:commit-snapshot=" + f"{repo}@dsg-commit-20261120T000001.000Z",
        repo,
    )
    for name, text in content.items():
        (mnt / name).write_text(text)
    subprocess.run(["chown", "1000:1000", str(mnt)], check=True)
    subprocess.run(["chmod", "0750", str(mnt)], check=True)
    zfs(
        "snapshot",
        "-o",
        f"dsg-storage:tx={EARLIER}",
        "-o",
        "dsg-storage:committed=2026-11-20T00:00:01.000+00:00",
        "-o",
        "dsg-storage:message=first",
        f"{repo}@dsg-commit-20261120T000001.000Z",
    )
    return repo, mnt


def open_sync_of_0_1(box: Sandbox, repo: str, mnt: Path) -> tuple[str, Path]:
    """An open sync transaction as 0.1.0's begin left it: pending mark, base snapshot,
    workspace clone with its record, mounted at its path."""
    ws, path = f"{repo}.dsg-ws-{TX}", Path(f"{mnt}.dsg-tx-{TX}")
    zfs("set", f"dsg-storage:pending={TX}", repo)
    zfs("snapshot", "-o", f"dsg-storage:tx={TX}", f"{repo}@dsg-base-{TX}")
    zfs(
        "clone",
        "-o",
        "atime=off",
        "-o",
        f"mountpoint={path}",
        *props(tx=TX, pattern="sync", state="open", repo=repo, path=str(path), mountpoint=str(mnt)),
        f"{repo}@dsg-base-{TX}",
        ws,
    )  # zfs clone mounts it (canmount=on), as 0.1's begin mounted it at its path
    return ws, path


def test_a_repository_of_0_1_is_read_and_synced(sandbox: Sandbox) -> None:
    name, mnt = repository_of_0_1(sandbox, {"a.txt": "one"})
    repo = Repository(name, zfs=sandbox.zfs)
    assert [(c.name, c.tx, c.message) for c in repo.history()] == [
        ("dsg-commit-20261120T000001.000Z", EARLIER, "first")
    ]
    with repo.begin() as tx:
        Path(tx.path, "b.txt").write_text("two")
    assert files(mnt) == {"a.txt": "one", "b.txt": "two"}
    assert owner_mode(mnt) == (1000, 1000, 0o750)
    assert [c.message for c in repo.history()] == ["first", None]


def test_an_open_transaction_of_0_1_is_committed(sandbox: Sandbox) -> None:
    name, mnt = repository_of_0_1(sandbox, {"a.txt": "one"})
    _, path = open_sync_of_0_1(sandbox, name, mnt)
    (path / "a.txt").write_text("changed")
    repo = Repository(name, zfs=sandbox.zfs)
    repo.transaction(TX).commit("from 0.1")
    assert files(mnt) == {"a.txt": "changed"}
    assert [n for n in sandbox.datasets() if ".dsg-" in n or "dsg-base" in n] == []
    assert sandbox.mounts() == {name: [str(mnt)]}


def test_a_commit_of_0_1_stopped_between_its_renames_is_finished(sandbox: Sandbox) -> None:
    name, mnt = repository_of_0_1(sandbox, {"a.txt": "one"})
    ws, path = open_sync_of_0_1(sandbox, name, mnt)
    (path / "a.txt").write_text("changed")
    zfs("unmount", ws)
    zfs("unmount", name)
    zfs("rename", name, f"{name}.dsg-old-{TX}")  # where 0.1.0's commit was killed
    repo = Repository(name, zfs=sandbox.zfs)
    assert repo.recover() == [f"{TX}: commit resumed", f"{TX}: commit finished"]
    assert files(mnt) == {"a.txt": "changed"}
    assert owner_mode(mnt) == (1000, 1000, 0o750)
    assert [n for n in sandbox.datasets() if ".dsg-" in n or "dsg-base" in n] == []
    assert sandbox.mounts() == {name: [str(mnt)]}


def test_a_commit_of_0_1_past_its_commit_point_is_finished(sandbox: Sandbox) -> None:
    name, mnt = repository_of_0_1(sandbox, {"a.txt": "one"})
    ws, path = open_sync_of_0_1(sandbox, name, mnt)
    (path / "a.txt").write_text("changed")
    zfs("set", "dsg-storage:commit-message=late", ws)
    zfs("unmount", ws)
    zfs("unmount", name)
    zfs("rename", name, f"{name}.dsg-old-{TX}")
    zfs("rename", ws, name)  # 0.1.0's commit point
    repo = Repository(name, zfs=sandbox.zfs)
    assert repo.recover() == [f"{TX}: commit finished"]
    assert files(mnt) == {"a.txt": "changed"}
    assert [c.message for c in repo.history()] == ["first", "late"]
    assert [n for n in sandbox.datasets() if ".dsg-" in n or "dsg-base" in n] == []
    assert sandbox.mounts() == {name: [str(mnt)]}
