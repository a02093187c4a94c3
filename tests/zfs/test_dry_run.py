"""``--dry-run`` on every changing command prints the steps and changes nothing (real ZFS):
the pool's datasets, snapshots, properties and mounts are compared before and after."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from dsg_storage import Repository, export_bundle

from .cli import dsg, with_src
from .conftest import Sandbox

# Space accounting moves with whatever else the pool does (another test, a deferred free).
ACCOUNTING = {
    "used",
    "available",
    "referenced",
    "written",
    "logicalused",
    "logicalreferenced",
    "compressratio",
    "refcompressratio",
    "usedbydataset",
    "usedbysnapshots",
    "usedbychildren",
    "usedbyrefreservation",
}


def pool_state(box: Sandbox) -> tuple[list[str], dict[str, list[str]], list[str]]:
    """Every dataset and snapshot below the sandbox with every property (but space
    accounting), the mounts, and the mount directory's entries."""
    props = subprocess.run(
        ["zfs", "get", "-H", "-p", "-r", "-t", "all", "-o", "name,property,value", "all", box.dataset],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    kept = [line for line in props if line.split("\t")[1] not in ACCOUNTING]
    return kept, box.mounts(), sorted(os.listdir(box.mount_dir))


def dry(box: Sandbox, *args: str) -> list[str]:
    before = pool_state(box)
    ran = dsg(*args, "--dry-run", allow=box.dataset, env=with_src())
    assert ran.returncode == 0, ran.stderr
    assert pool_state(box) == before, f"{args} changed the pool"
    steps = json.loads(ran.stdout)
    assert isinstance(steps, list) and all(isinstance(s, str) for s in steps)
    return steps


def test_every_changing_command_has_a_dry_run_that_changes_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    new = f"{sandbox.dataset}/new"
    steps = dry(sandbox, "begin", new, "--mountpoint", str(sandbox.mount_dir / "new"), "--owner", "0:0")
    assert any(s.startswith("begin (init)") for s in steps) and any("create" in s for s in steps)

    repo = Repository(f"{sandbox.dataset}/repo", zfs=sandbox.zfs)
    with repo.begin(mountpoint=str(sandbox.mount_dir / "repo"), owner="0:0", mode="0755") as tx:
        Path(tx.path, "a.txt").write_text("a")
    steps = dry(sandbox, "begin", repo.name)
    assert any(s.startswith("begin (sync)") for s in steps) and any("clone" in s for s in steps)
    assert dry(sandbox, "snapshot", repo.name, "--name", "later") == [f"snapshot {repo.name}@later"]
    assert dry(sandbox, "recover", repo.name) == []

    tx = repo.begin()
    Path(tx.path, "a.txt").write_text("b")
    steps = dry(sandbox, "commit", repo.name, tx.id, "-m", "m")
    assert any("read-only" in s for s in steps) and any(f"rename {tx.dataset} to {repo.name}" in s for s in steps)
    steps = dry(sandbox, "rollback", repo.name, tx.id)
    assert any(f"destroy {tx.dataset}" in s for s in steps)
    assert dry(sandbox, "abort", repo.name, tx.id) == steps
    tx.commit()

    bundle = tmp_path / "repo.dsgb"
    export_bundle(repo.name, bundle, audit_log=tmp_path / "audit.log")
    steps = dry(
        sandbox,
        "bundle",
        "import",
        str(bundle),
        "--into",
        f"{sandbox.dataset}/copy",
        "--mountpoint",
        str(tmp_path / "copy"),
    )
    assert len(steps) == len(repo.history()) and all(s.startswith("receive ") for s in steps)
