"""``--dry-run`` on every changing command prints the steps and changes nothing (real ZFS):
the pool's datasets, snapshots, properties and mounts are compared before and after."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from dsg_storage import Repository, export_bundle

from .cli import dsg, dsg_json, with_src
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


TX_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{6}")


def planned_actions(lines: list[str]) -> list[str]:
    """The action lines of an import's plan (its dry run), transaction ids made equal."""
    start = next(i for i, line in enumerate(lines) if line.startswith("import ("))
    actions = [line.strip().removesuffix("<- the commit point").strip() for line in lines[start + 1 : -1]]
    return [TX_ID.sub("TX", line) for line in actions]


def test_a_bundle_imports_dry_run_is_the_plan_the_import_then_runs(sandbox: Sandbox, tmp_path: Path) -> None:
    repo = Repository(f"{sandbox.dataset}/repo", zfs=sandbox.zfs)
    with repo.begin(mountpoint=str(sandbox.mount_dir / "repo"), owner="0:0", mode="0755") as tx:
        Path(tx.path, "a.txt").write_text("a")
    first = repo.history()[-1].name
    full, week = tmp_path / "repo.dsgb", tmp_path / "week.dsgb"
    export_bundle(repo.name, full, audit_log=tmp_path / "audit.log")
    with repo.begin() as tx:
        Path(tx.path, "b.txt").write_text("b")
    export_bundle(repo.name, week, since=first, audit_log=tmp_path / "audit.log")
    into = f"{sandbox.dataset}/copy"
    full_args = ("bundle", "import", str(full), "--into", into, "--mountpoint", str(sandbox.mount_dir / "copy"))
    for args in (full_args, ("bundle", "import", str(week), "--into", into)):
        plan = planned_actions(dry(sandbox, *args, "--audit-log", str(tmp_path / "audit.log")))
        ran = dsg_json(*args, "--audit-log", str(tmp_path / "audit.log"), allow=sandbox.dataset, env=with_src())
        steps = [TX_ID.sub("TX", step) for step in ran["steps"]]
        assert plan and steps[: len(plan)] == plan, (plan, steps)
        assert any("the commit point" not in s and ("rename" in s or "inherit" in s) for s in plan)
    assert Repository(into, zfs=sandbox.zfs).history()[-1].name == repo.history()[-1].name
    assert (sandbox.mount_dir / "copy" / "b.txt").read_text() == "b"
