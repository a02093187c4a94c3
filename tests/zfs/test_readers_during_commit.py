"""Readers never block a commit; a writer does (real ZFS).

Each reader keeps what it had (its open file reads the old bytes), the mount path shows
the new commit as soon as commit returns, one mount there; once the readers let go,
recovery (or the queue) retires the old head and nothing of ours is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dsg_storage import DatasetBusyError, Repository

from .cli import dsg, dsg_json
from .conftest import Sandbox
from .test_transactions import files

OLD = {"f.txt": "old"}
NEW = {"f.txt": "new"}


def repository(box: Sandbox) -> tuple[Repository, Path]:
    repo, mnt = Repository(f"{box.dataset}/repo", zfs=box.zfs), box.mount_dir / "repo"
    with repo.begin(mountpoint=str(mnt), owner="0:0", mode="0755") as tx:
        Path(tx.path, "f.txt").write_text("old")
    return repo, mnt


def sync(repo: Repository, text: str) -> None:
    with repo.begin() as tx:
        Path(tx.path, "f.txt").write_text(text)


def mount_options(path: Path) -> list[str]:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(path):
            return fields[5].split(",")
    return []


def assert_settled(box: Sandbox, repo: Repository, mnt: Path, content: dict[str, str], commits: int) -> None:
    """After the readers are gone and recovery ran: nothing of ours left, one mount."""
    repo.recover()
    assert [n for n in box.datasets() if ".dsg-" in n or "@dsg-base-" in n] == []
    assert box.mounts() == {repo.name: [str(mnt)]}
    assert files(mnt) == content
    assert len(repo.history()) == commits
    assert "rw" in mount_options(mnt)


def test_a_shell_in_the_repository_keeps_its_view_and_does_not_block(sandbox: Sandbox) -> None:
    repo, mnt = repository(sandbox)
    shell = subprocess.Popen(["sleep", "600"], cwd=mnt)
    try:
        sync(repo, "new")
        assert files(mnt) == NEW
        assert Path(f"/proc/{shell.pid}/cwd/f.txt").read_text() == "old"
        assert sandbox.mounts()[repo.name] == [str(mnt)]
    finally:
        shell.kill()
        shell.wait()
    assert_settled(sandbox, repo, mnt, NEW, 2)


def test_a_file_open_for_reading_reads_the_old_bytes_after_the_commit(sandbox: Sandbox) -> None:
    repo, mnt = repository(sandbox)
    with open(mnt / "f.txt") as held:
        sync(repo, "new")
        assert files(mnt) == NEW
        assert held.read() == "old"
    assert_settled(sandbox, repo, mnt, NEW, 2)


def test_a_shell_browsing_a_snapshot_does_not_block(sandbox: Sandbox) -> None:
    repo, mnt = repository(sandbox)
    first = repo.history()[0].name
    browsing = subprocess.Popen(["sleep", "600"], cwd=mnt / ".zfs" / "snapshot" / first)
    try:
        sync(repo, "new")
        assert files(mnt) == NEW
        assert repo.history()[0].name == first  # the whole history, promote or not
        assert Path(f"/proc/{browsing.pid}/cwd/f.txt").read_text() == "old"
    finally:
        browsing.kill()
        browsing.wait()
    assert_settled(sandbox, repo, mnt, NEW, 2)


READER = """
import signal, sys, time
from dsg_storage import open_live
reader = open_live(allow=sys.argv[1])
signal.signal(signal.SIGTERM, lambda *_: (reader.close(), sys.exit(0)))  # it closes when asked
data = reader.read(sys.argv[2], "f.txt", commit=sys.argv[3])
print(data.decode(), flush=True)
time.sleep(600)
"""


def start_reader(box: Sandbox, repo: Repository, commit: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, box.dataset, repo.name, commit], stdout=subprocess.PIPE, text=True, env=env
    )
    assert reader.stdout is not None
    assert reader.stdout.readline().strip() == "old"  # it has the old commit mounted now
    return reader


@pytest.mark.parametrize("ending", ["closes", "is killed"])
def test_the_library_reader_on_an_old_commit_does_not_block(sandbox: Sandbox, ending: str) -> None:
    repo, mnt = repository(sandbox)
    first = repo.history()[0].name
    reader = start_reader(sandbox, repo, first)
    try:
        sync(repo, "new")
        assert files(mnt) == NEW
        history = [c.name for c in repo.history()]
        assert len(history) == 2 and history[0] == first
        # the command line reads the head and its snapshots in one zfs get: through the old head too
        assert [c["name"] for c in dsg_json("history", repo.name, allow=sandbox.dataset)] == history
        cat = dsg("cat", repo.name, "f.txt", "--commit", first, allow=sandbox.dataset, json=False)
        assert (cat.returncode, cat.stdout) == (0, "old"), cat.stderr
        sync(repo, "newer")  # and the next commit, with the promote still due
        assert files(mnt) == {"f.txt": "newer"}
        assert [c.name for c in repo.history()][:2] == history
    finally:
        reader.send_signal(signal.SIGTERM if ending == "closes" else signal.SIGKILL)
        reader.wait()
    assert_settled(sandbox, repo, mnt, {"f.txt": "newer"}, 3)


WRITER = """
import sys, time
handle = open(sys.argv[1], "a")  # open for writing; nothing written
print("open", flush=True)
time.sleep(600)
"""


def test_a_writer_blocks_the_commit_until_it_is_gone(sandbox: Sandbox) -> None:
    repo, mnt = repository(sandbox)
    tx = repo.begin()
    Path(tx.path, "f.txt").write_text("new")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(mnt / "f.txt")], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "open"
        started = time.monotonic()
        with pytest.raises(DatasetBusyError, match=rf"open for writing by {writer.pid} \(python"):
            tx.commit(wait=1.0)
        assert time.monotonic() - started >= 1.0
        cli = subprocess.run(
            [sys.executable, "-m", "dsg_storage", "--allow", sandbox.dataset, "commit", repo.name, tx.id],
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src")),
            check=False,
        )
        assert cli.returncode == 5, cli.stderr
        assert str(writer.pid) in cli.stderr
        assert files(mnt) == OLD and "rw" in mount_options(mnt)
        assert [p.state for p in repo.pending()] == ["open"]
    finally:
        writer.kill()
        writer.wait()
    tx.commit()
    assert_settled(sandbox, repo, mnt, NEW, 2)
