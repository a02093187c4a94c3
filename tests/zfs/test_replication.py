"""Replication with ZFS's own tools: a repository sent with ``zfs send -R`` (what zrepl
and syncoid do underneath) is recognized by ``status`` and ``history`` on the other side,
and our temporary snapshots and datasets do not travel with it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from dsg_storage import Repository

from .cli import dsg, dsg_json
from .conftest import Sandbox
from .test_transactions import OWNER


def send_receive(send: list[str], receive: list[str]) -> None:
    sender = subprocess.Popen(["zfs", "send", *send], stdout=subprocess.PIPE)
    received = subprocess.run(["zfs", "receive", *receive], stdin=sender.stdout, capture_output=True, check=False)
    assert sender.stdout is not None
    sender.stdout.close()
    assert sender.wait() == 0 and received.returncode == 0, received.stderr


def test_a_repository_received_with_zfs_send_R_is_recognized_by_status_and_history(sandbox: Sandbox) -> None:
    source = Repository(f"{sandbox.dataset}/here/survey", zfs=sandbox.zfs)
    sandbox.zfs.create(f"{sandbox.dataset}/here", {"mountpoint": "none"})
    sandbox.zfs.create(f"{sandbox.dataset}/there", {"mountpoint": "none"})
    for n in range(2):
        tx = source.begin(mountpoint=str(sandbox.mount_dir / "survey"), owner=OWNER, mode="0750")
        Path(tx.path, f"{n}.txt").write_text(str(n))
        tx.commit(f"commit {n}")
    first, second = source.history()
    open_tx = source.begin()  # an open transaction: a @dsg-base- snapshot and a .dsg-ws- sibling
    Path(open_tx.path, "wip.txt").write_text("not committed")

    # A full replication up to the latest commit, as syncoid's first run does (the base
    # snapshot, newer than the commit, and the workspace, a sibling, stay behind).
    target = f"{sandbox.dataset}/there/survey"
    send_receive(["-R", first.snapshot], ["-u", "-x", "mountpoint", target])
    # Later runs send incrementally, with properties (-p): without them the new commit
    # arrives without its message, time and transaction id.
    send_receive(["-p", "-I", first.snapshot, second.snapshot], ["-u", "-x", "mountpoint", target])

    history = dsg_json("history", target, allow=sandbox.dataset)
    assert [(c["name"], c["guid"], c["message"]) for c in history] == [
        (first.name, first.guid, "commit 0"),
        (second.name, second.guid, "commit 1"),
    ]
    assert all(c["freshness"] == "fresh" and c["tx"] and c["committed"] for c in history)
    status = dsg_json("status", target, allow=sandbox.dataset)
    assert status["exists"] is True and status["pending"] == [] and status["leftovers"] == []
    assert status["last_commit"]["name"] == second.name and status["owner"] == "1234:5678"
    repos = dsg_json("repos", f"{sandbox.dataset}/there", allow=sandbox.dataset)
    assert [(r["name"], r["commits"], r["owner"]) for r in repos] == [(target, 2, "1234:5678")]
    received = [n for n in sandbox.datasets() if n.startswith("there/")]
    assert received == ["there/survey", f"there/survey@{first.name}", f"there/survey@{second.name}"]
    open_tx.rollback()


def test_a_replica_received_mid_transaction_is_shown_not_acted_on(sandbox: Sandbox) -> None:
    """``zfs send -R PARENT@snap`` during a transaction carries the workspace and the base:
    on the replica, ``status`` shows the source's open transaction and that it is a
    replica; ``recover`` (the zedlet's included) mounts nothing and changes nothing; a
    begin is refused unless the caller says the replica is now the primary."""
    sandbox.zfs.create(f"{sandbox.dataset}/here", {"mountpoint": "none"})
    sandbox.zfs.create(f"{sandbox.dataset}/there", {"mountpoint": "none"})
    source = Repository(f"{sandbox.dataset}/here/survey", zfs=sandbox.zfs)
    with source.begin(mountpoint=str(sandbox.mount_dir / "survey"), owner=OWNER, mode="0750") as tx:
        Path(tx.path, "a.txt").write_text("a")
    open_tx = source.begin()
    subprocess.run(["zfs", "snapshot", "-r", f"{sandbox.dataset}/here@rep"], check=True)
    send_receive(["-R", f"{sandbox.dataset}/here@rep"], ["-u", "-x", "mountpoint", f"{sandbox.dataset}/there/copy"])
    replica = f"{sandbox.dataset}/there/copy/survey"
    before = sandbox.datasets()

    status = dsg_json("status", replica, allow=sandbox.dataset)
    assert status["replica"] is True and [p["tx"] for p in status["pending"]] == [open_tx.id]
    assert dsg_json("recover", replica, allow=sandbox.dataset)["actions"] == []
    assert dsg_json("recover", "--pool", sandbox.dataset.split("/")[0], allow=sandbox.dataset)  # the zedlet's
    assert not [d for d in sandbox.mounts() if "/there/" in d]  # nothing mounted at the source's paths
    refused = dsg("begin", replica, allow=sandbox.dataset)
    assert refused.returncode == 3 and "replica" in refused.stderr
    assert sandbox.datasets() == before
    open_tx.rollback()
