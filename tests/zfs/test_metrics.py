"""`dsg-storage metrics` on real ZFS: the values a test sets up (commits, an open
transaction, queue items) come back through the Prometheus text parser."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from dsg_storage import Queue, Repository

from .conftest import Sandbox
from .test_transactions import OWNER


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_report_commits_open_transactions_and_the_queue(sandbox: Sandbox, tmp_path: Path) -> None:
    repo = Repository(f"{sandbox.dataset}/survey", zfs=sandbox.zfs)
    for n in range(3):
        tx = repo.begin(mountpoint=str(sandbox.mount_dir / "survey"), owner=OWNER, mode="0750")
        Path(tx.path, "n.txt").write_text(str(n))
        tx.commit()
    idle = Repository(f"{sandbox.dataset}/idle", zfs=sandbox.zfs)
    idle.begin(mountpoint=str(sandbox.mount_dir / "idle"), owner=OWNER, mode="0750").commit()
    open_tx = repo.begin()
    queue_path = tmp_path / "q.sqlite"
    with Queue(queue_path, clock=lambda: time.time() - 120, max_pending=50) as queue:
        queue.add_snapshot(f"{sandbox.dataset}/survey@later")
        queue.add_destroy(f"{sandbox.dataset}/gone")
    env = {**os.environ, "DSG_STORAGE_QUEUE": str(queue_path)}
    textfile_dir = tmp_path / "textfile"
    textfile_dir.mkdir()
    cli = [sys.executable, "-m", "dsg_storage", "--allow", sandbox.dataset, "metrics"]
    printed = subprocess.run(cli, capture_output=True, text=True, check=False, env=env)
    assert printed.returncode == 0, printed.stderr
    written = subprocess.run(
        [*cli, "--textfile", str(textfile_dir)], capture_output=True, text=True, check=False, env=env
    )
    assert written.returncode == 0, written.stderr
    assert os.listdir(textfile_dir) == ["dsg_storage.prom"]

    for text in (printed.stdout, (textfile_dir / "dsg_storage.prom").read_text()):
        got = samples(text)
        survey = (("repository", repo.name),)
        assert got[("dsg_storage_commits", survey)] == 3
        assert got[("dsg_storage_commits", (("repository", idle.name),))] == 1
        last = datetime.fromisoformat(repo.history()[-1].committed).timestamp()
        assert got[("dsg_storage_last_commit_timestamp_seconds", survey)] == last
        assert got[("dsg_storage_open_transactions", survey)] == 1
        assert got[("dsg_storage_open_transactions", (("repository", idle.name),))] == 0
        key = (("repository", repo.name), ("state", "open"), ("tx", open_tx.id))
        assert 0 <= got[("dsg_storage_transaction_age_seconds", key)] < 600
        assert got[("dsg_storage_queue_items", (("state", "pending"),))] == 2
        assert got[("dsg_storage_queue_items", (("state", "done"),))] == 0
        assert 120 <= got[("dsg_storage_queue_oldest_pending_age_seconds", ())] < 600
        assert got[("dsg_storage_up", (("under", sandbox.dataset),))] == 1
    open_tx.rollback()
