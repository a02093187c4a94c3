"""Transactions on real ZFS: the init and sync patterns, as a user sees them."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dsg_storage import (
    DatasetBusyError,
    InvalidArgumentError,
    InvalidNameError,
    NotAllowedError,
    Pattern,
    Repository,
    State,
)
from dsg_storage.zfs.boundary import Zfs
from dsg_storage.zfs.mounts import zfs_mounts

from .cli import dsg
from .conftest import Sandbox

OWNER = (1234, 5678)


def files(path: Path | str) -> dict[str, str]:
    root = Path(path)
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def owner_mode(path: Path | str) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_uid, st.st_gid, st.st_mode & 0o7777


def zfs_prop(dataset: str, name: str) -> str:
    return subprocess.run(
        ["zfs", "get", "-H", "-o", "value", name, dataset], capture_output=True, text=True, check=True
    ).stdout.strip()


def make_repo(sandbox: Sandbox, content: dict[str, str], name: str = "repo") -> tuple[Repository, Path]:
    """An existing repository (committed through init) holding ``content``."""
    repo = Repository(f"{sandbox.dataset}/{name}", zfs=sandbox.zfs)
    mnt = sandbox.mount_dir / name
    with repo.begin(mountpoint=str(mnt), owner=OWNER, mode="0750") as tx:
        for rel, text in content.items():
            Path(tx.path, rel).parent.mkdir(parents=True, exist_ok=True)
            Path(tx.path, rel).write_text(text)
    return repo, mnt


def test_init_commit_creates_the_repository_mounted_owned_and_with_one_commit(sandbox: Sandbox) -> None:
    repo = Repository(f"{sandbox.dataset}/repo", zfs=sandbox.zfs)
    mnt = sandbox.mount_dir / "repo"
    tx = repo.begin(mountpoint=str(mnt), owner=OWNER, mode="0750")

    assert tx.pattern is Pattern.INIT
    assert tx.dataset == f"{repo.name}.dsg-init-{tx.id}"
    assert owner_mode(tx.path) == (*OWNER, 0o750)
    assert zfs_mounts()[tx.dataset] == [tx.path]
    assert not repo.exists()
    Path(tx.path, "data.csv").write_text("a,b\n")

    commit = tx.commit("first")
    assert tx.state is State.COMMITTED
    assert files(mnt) == {"data.csv": "a,b\n"}
    assert owner_mode(mnt) == (*OWNER, 0o750)
    assert zfs_prop(repo.name, "mountpoint") == str(mnt)
    assert zfs_mounts()[repo.name] == [str(mnt)]
    assert sandbox.datasets() == ["repo", commit.snapshot.removeprefix(sandbox.dataset + "/")]
    assert repo.history() == [commit]  # what commit returned is what the pool recorded
    assert commit.message == "first" and commit.guid > 0
    assert not Path(tx.path).exists()


def test_init_rollback_leaves_nothing(sandbox: Sandbox) -> None:
    repo = Repository(f"{sandbox.dataset}/repo", zfs=sandbox.zfs)
    tx = repo.begin(mountpoint=str(sandbox.mount_dir / "repo"))
    Path(tx.path, "x").write_text("x")
    tx.rollback()
    assert sandbox.datasets() == []
    assert sandbox.mounts() == {}
    assert list(sandbox.mount_dir.iterdir()) == []


def test_sync_commit_applies_added_changed_and_deleted_files(sandbox: Sandbox) -> None:
    repo, mnt = make_repo(sandbox, {"keep.txt": "same", "change.txt": "old", "delete.txt": "bye", "d/deep.txt": "1"})
    head_before = repo.history()[-1]

    tx = repo.begin()
    assert tx.pattern is Pattern.SYNC
    assert files(tx.path) == files(mnt)  # the workspace starts as the repository
    assert owner_mode(tx.path) == (*OWNER, 0o750)  # owner/mode recorded at init reapplied
    Path(tx.path, "change.txt").write_text("new")
    Path(tx.path, "delete.txt").unlink()
    Path(tx.path, "added.txt").write_text("hello")
    Path(tx.path, "d/deep.txt").write_text("2")
    # The repository is untouched until commit.
    assert files(mnt)["change.txt"] == "old" and (mnt / "delete.txt").exists()

    tx.commit("second")
    assert files(mnt) == {"keep.txt": "same", "change.txt": "new", "added.txt": "hello", "d/deep.txt": "2"}
    assert owner_mode(mnt) == (*OWNER, 0o750)
    assert zfs_prop(repo.name, "mountpoint") == str(mnt)
    assert zfs_mounts()[repo.name] == [str(mnt)]
    history = repo.history()
    assert [c.message for c in history] == [None, "second"]
    assert history[0].guid == head_before.guid  # the old commit survives the swap
    assert zfs_prop(repo.name, "origin") == "-"  # the new head depends on nothing
    assert [d for d in sandbox.datasets() if "@" not in d] == ["repo"]


def test_sync_rollback_leaves_the_repository_untouched(sandbox: Sandbox) -> None:
    repo, mnt = make_repo(sandbox, {"a": "1"})
    before = (sandbox.datasets(), repo.history())
    with pytest.raises(RuntimeError, match="boom"), repo.begin() as tx:
        Path(tx.path, "a").write_text("changed")
        Path(tx.path, "b").write_text("new")
        raise RuntimeError("boom")
    assert tx.state is State.ROLLED_BACK
    assert files(mnt) == {"a": "1"}
    assert (sandbox.datasets(), repo.history()) == before
    assert sandbox.mounts() == {repo.name: [str(mnt)]}


def test_mountpoint_and_owner_survive_unmount_and_remount(sandbox: Sandbox) -> None:
    repo, mnt = make_repo(sandbox, {"a": "1"})
    with repo.begin() as tx:
        Path(tx.path, "a").write_text("2")
    subprocess.run(["zfs", "unmount", repo.name], check=True)
    assert repo.name not in zfs_mounts()
    subprocess.run(["zfs", "mount", repo.name], check=True)  # uses the mountpoint property
    assert zfs_mounts()[repo.name] == [str(mnt)]
    assert files(mnt) == {"a": "2"} and owner_mode(mnt) == (*OWNER, 0o750)


def test_history_after_ten_syncs_is_oldest_first_with_messages(sandbox: Sandbox) -> None:
    repo, mnt = make_repo(sandbox, {"n": "0"})
    for n in range(1, 11):
        with repo.begin() as tx:
            Path(tx.path, "n").write_text(str(n))
            tx.commit(f"sync {n}")
    history = repo.history()
    assert [c.message for c in history] == [None] + [f"sync {n}" for n in range(1, 11)]
    assert [c.createtxg for c in history] == sorted(c.createtxg for c in history)
    assert [c.name for c in history] == sorted(c.name for c in history)
    assert len({c.tx for c in history}) == 11
    assert files(mnt) == {"n": "10"}


def test_ten_commits_and_ten_rollbacks_leak_nothing(sandbox: Sandbox) -> None:
    repo, mnt = make_repo(sandbox, {"n": "0"})
    for n in range(10):
        with repo.begin() as tx:
            Path(tx.path, "n").write_text(str(n))
        tx = repo.begin()
        Path(tx.path, "junk").write_text("x")
        tx.rollback()
    commits = [c.snapshot.removeprefix(sandbox.dataset + "/") for c in repo.history()]
    assert len(commits) == 11
    assert sandbox.datasets() == sorted(["repo", *commits])
    assert sandbox.mounts() == {repo.name: [str(mnt)]}  # one mount, nothing stacked
    assert sorted(p.name for p in sandbox.mount_dir.iterdir()) == ["repo"]
    assert repo.pending() == []
    assert files(mnt) == {"n": "9"}


def test_properties_given_to_begin_are_the_workspaces_then_the_repositorys(sandbox: Sandbox) -> None:
    """A caller's user properties are created with the workspace and stay on the
    repository; a sync that gives one anew has the last word, one that gives none keeps
    the repository's; one a caller may not give is refused before anything changes."""
    repo, mnt = Repository(f"{sandbox.dataset}/repo", zfs=sandbox.zfs), sandbox.mount_dir / "repo"
    tx = repo.begin(mountpoint=str(mnt), properties={"org.example:job": "init 1"})
    assert zfs_prop(tx.dataset, "org.example:job") == "init 1"
    tx.commit()
    assert zfs_prop(repo.name, "org.example:job") == "init 1"
    subprocess.run(["zfs", "set", "org.example:site=field office", repo.name], check=True)  # someone else's
    tx = repo.begin(properties={"org.example:job": "nightly 7"})
    assert zfs_prop(tx.dataset, "org.example:job") == "nightly 7"
    tx.commit()
    assert zfs_prop(repo.name, "org.example:job") == "nightly 7"
    with repo.begin() as tx:
        Path(tx.path, "a").write_text("3")
    assert [zfs_prop(repo.name, p) for p in ("org.example:job", "org.example:site")] == ["nightly 7", "field office"]
    before = (sandbox.datasets(), sandbox.mounts())
    for refused in ({"dsg-storage:state": "committed"}, {"NoColon": "x"}, {"org.example:job": "a\0b"}):
        with pytest.raises(InvalidArgumentError, match="property"):
            repo.begin(properties=refused)
    assert (sandbox.datasets(), sandbox.mounts()) == before and repo.pending() == []


def test_allow_list_refusal_touches_nothing(sandbox: Sandbox) -> None:
    outside = Repository(f"{sandbox.dataset}/repo", zfs=Zfs(sandbox.allow.parse("dsgtest/elsewhere")))
    with pytest.raises(NotAllowedError, match="outside the allowed"):
        outside.begin(mountpoint=str(sandbox.mount_dir / "repo"))
    # Allowing only the repository itself is not enough: its workspace is a sibling.
    only_repo = Repository(f"{sandbox.dataset}/repo", zfs=Zfs(sandbox.allow.parse(f"{sandbox.dataset}/repo")))
    with pytest.raises(NotAllowedError, match="dsg-ws-"):
        only_repo.begin(mountpoint=str(sandbox.mount_dir / "repo"))
    assert sandbox.datasets() == [] and list(sandbox.mount_dir.iterdir()) == []


@pytest.mark.parametrize("leaf", ["", "a@b", "a#b", "../x", "a//b", "a/"])
def test_invalid_names_are_refused_before_any_zfs_call(sandbox: Sandbox, leaf: str) -> None:
    with pytest.raises(InvalidNameError):
        Repository(f"{sandbox.dataset}/{leaf}" if leaf else "", zfs=sandbox.zfs)
    with pytest.raises(InvalidNameError, match="pool's root"):
        Repository("dsgtest", zfs=sandbox.zfs)
    assert sandbox.datasets() == []


def test_init_under_a_missing_parent_names_the_parent(sandbox: Sandbox) -> None:
    with pytest.raises(FileNotFoundError, match=f"parent dataset {sandbox.dataset}/nope"):
        Repository(f"{sandbox.dataset}/nope/repo", zfs=sandbox.zfs).begin(mountpoint=str(sandbox.mount_dir / "r"))
    assert sandbox.datasets() == []


def test_init_without_mountpoint_is_refused(sandbox: Sandbox) -> None:
    with pytest.raises(InvalidArgumentError, match="needs a mountpoint"):
        Repository(f"{sandbox.dataset}/repo", zfs=sandbox.zfs).begin()
    assert sandbox.datasets() == []


def test_running_out_of_space_rolls_back_with_the_repository_intact(sandbox: Sandbox) -> None:
    repo, mnt = make_repo(sandbox, {"a": "small"})
    subprocess.run(["zfs", "set", "quota=20M", sandbox.dataset], check=True)
    with pytest.raises(OSError) as info, repo.begin() as tx:
        Path(tx.path, "a").write_text("changed")
        with open(Path(tx.path, "big"), "wb") as handle:
            for _ in range(64):
                handle.write(os.urandom(1024 * 1024))
                handle.flush()
                os.fsync(handle.fileno())
    assert info.value.errno in (errno.ENOSPC, errno.EDQUOT)
    assert tx.state is State.ROLLED_BACK
    assert files(mnt) == {"a": "small"}
    assert [d for d in sandbox.datasets() if "@" not in d] == ["repo"]
    assert repo.pending() == []


def test_commit_while_the_workspace_is_in_use_reports_who_holds_it(sandbox: Sandbox) -> None:
    repo, _ = make_repo(sandbox, {"a": "1"})
    repo.zfs.busy_timeout = 0.5
    tx = repo.begin()
    holder = subprocess.Popen(["sleep", "30"], cwd=tx.path)
    try:
        with pytest.raises(DatasetBusyError, match=rf"{holder.pid} \(sleep\)"):
            tx.commit()
    finally:
        holder.kill()
        holder.wait()
    tx.rollback()  # the transaction was still open and can be thrown away
    assert repo.pending() == []


def test_begin_in_one_process_commit_in_another_through_the_command_line(sandbox: Sandbox) -> None:
    name, mnt = f"{sandbox.dataset}/repo", sandbox.mount_dir / "repo"
    begun = dsg(
        "begin", name, "--mountpoint", str(mnt), "--owner", "1234:5678", "--mode", "0700", allow=sandbox.dataset
    )
    assert begun.returncode == 0, begun.stderr
    out = json.loads(begun.stdout)
    assert set(out) == {"tx", "pattern", "path"} and out["pattern"] == "init"
    Path(out["path"], "f").write_text("from process 1")

    committed = dsg("commit", name, out["tx"], "-m", "cross-process", allow=sandbox.dataset)
    assert committed.returncode == 0, committed.stderr
    assert files(mnt) == {"f": "from process 1"} and owner_mode(mnt) == (1234, 5678, 0o700)

    synced = json.loads(dsg("begin", name, allow=sandbox.dataset).stdout)
    assert synced["pattern"] == "sync"
    rolled = dsg("rollback", name, synced["tx"], allow=sandbox.dataset)
    assert rolled.returncode == 0, rolled.stderr

    history = json.loads(dsg("history", name, allow=sandbox.dataset).stdout)
    assert [h["message"] for h in history] == ["cross-process"]
    status = json.loads(dsg("status", name, allow=sandbox.dataset).stdout)
    assert status["mountpoint"] == str(mnt) and status["mounted_at"] == [str(mnt)]
    assert status["owner"] == "1234:5678" and status["pending"] == []
    assert status["last_commit"]["message"] == "cross-process"


def test_command_line_errors_are_one_line_with_a_distinct_exit_status(sandbox: Sandbox) -> None:
    name = f"{sandbox.dataset}/repo"
    refused = dsg("begin", name, "--mountpoint", "/tmp/x", allow="dsgtest/elsewhere")
    assert refused.returncode == 3 and refused.stderr.count("\n") == 1
    assert refused.stderr.startswith("dsg-storage: ") and name in refused.stderr
    missing = dsg("commit", name, "20261121T071530Z-abcdef", allow=sandbox.dataset)
    assert missing.returncode == 4 and "no open transaction" in missing.stderr
    bad = dsg("begin", name + "@x", allow=sandbox.dataset)
    assert bad.returncode == 2
    assert sandbox.datasets() == []


def test_a_mountpoint_inherited_from_the_parent_stays_inherited(sandbox: Sandbox) -> None:
    """The idiomatic layout (repositories under a parent that has the mount base) needs no
    mountpoint property of its own: commits keep it inherited, temporary mounts sit beside."""
    parent, base = f"{sandbox.dataset}/data", sandbox.mount_dir / "data"
    subprocess.run(["zfs", "create", "-o", f"mountpoint={base}", parent], check=True)
    repo = Repository(f"{parent}/repo", zfs=sandbox.zfs)
    tx = repo.begin(mountpoint=str(base / "repo"), owner=OWNER, mode="0750")
    assert tx.path == f"{base}/repo.dsg-init-{tx.id}"
    Path(tx.path, "a").write_text("1")
    tx.commit()
    for n in (2, 3):
        with repo.begin() as tx:
            assert tx.path == f"{base}/repo.dsg-ws-{tx.id}"
            Path(tx.path, "a").write_text(str(n))
    assert files(base / "repo") == {"a": "3"} and owner_mode(base / "repo") == (*OWNER, 0o750)
    source = subprocess.run(
        ["zfs", "get", "-H", "-o", "source", "mountpoint", repo.name], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert source == f"inherited from {parent}"
    assert zfs_mounts()[repo.name] == [str(base / "repo")]
    assert sorted(p.name for p in base.iterdir()) == ["repo"]
    assert len(repo.history()) == 3 and repo.pending() == []


def test_the_readme_demo_runs_and_leaves_nothing(sandbox: Sandbox) -> None:
    parent = f"{sandbox.dataset}/demo"
    result = subprocess.run(
        [sys.executable, "-m", "dsg_storage", "demo", "--parent", parent, "--mount-dir", str(sandbox.mount_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for expected in ("pattern=init", "pattern=sync", "rollback", "second version", "temporary datasets left: none"):
        assert expected in result.stdout
    assert sandbox.datasets() == ["demo"] and sandbox.mounts() == {}
