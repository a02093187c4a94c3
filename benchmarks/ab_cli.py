#!/usr/bin/env python3
"""Commands that read a history (and prune, with nothing to destroy) of two source trees
side by side, on one repository with a history.

    ./testpool/run python3 benchmarks/ab_cli.py --before OLD_CHECKOUT [--commits 1000] [--rounds 5] [--siblings N]

``OLD_CHECKOUT`` holds the other tree's ``src/`` (``git archive COMMIT src | tar -x -C DIR``).
One repository is made as ``bench_scale.py`` makes its long history (a library init,
then ``--commits`` commit snapshots, one sync task each). Each tree's package is copied
to this machine's disk and run as ``bench_cli.py`` runs it (bytecode cached by an
untimed run of each command). Each round runs every command once per tree, the trees in
alternating order; printed: medians per command and tree, and after/before.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import bench_scale as scale
from bench_cli import CONSOLE_SCRIPT, install, run_once

COMMANDS = {
    "history": ["history", scale.DEEP],
    "status": ["status", scale.DEEP],
    "prune --dry-run": ["prune", scale.DEEP, "--keep-last", "5", "--dry-run"],
    # prune itself, through the library's boundary (channel programs), destroying nothing
    "prune, nothing to destroy": ["prune", scale.DEEP, "--keep-last", "100000"],
}  # and cat --commit OLDEST (the init's commit), once the repository is made


def installed(tree: Path, tmp: Path, name: str) -> tuple[list[str], dict[str, str]]:
    """The console script and environment that run ``tree``'s package from ``tmp``."""
    env = {k: v for k, v in os.environ.items() if k not in ("DSG_STORAGE_ALLOW", "PYTHONDONTWRITEBYTECODE")}
    install(tmp / name / "site", env, tree / "src" / "dsg_storage")
    # Not bench_cli.console_script: an installed dsg-storage on PATH would run neither tree.
    script = tmp / name / "dsg-storage"
    script.write_text(CONSOLE_SCRIPT)
    env["PYTHONPYCACHEPREFIX"] = str(tmp / name / "pycache")
    env["DSG_STORAGE_QUEUE"] = str(tmp / name / "queue.sqlite")
    return [sys.executable, str(script), "--allow", scale.DEEP_PARENT], env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="a checkout whose src/ is the other tree")
    parser.add_argument("--commits", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--siblings", type=int, default=0, help="other filesystems beside the repository (status reads its siblings)"
    )
    args = parser.parse_args()
    trees = {"before": args.before.resolve(), "after": Path(__file__).resolve().parents[1]}
    subprocess.run(["zfs", "destroy", "-R", "-f", scale.ROOT], capture_output=True, check=False)
    try:
        scale.zfs_cmd("create", "-p", "-o", f"mountpoint={scale.MOUNT_BASE}", scale.ROOT)
        scale.zfs_cmd("create", scale.DEEP_PARENT)
        scale.init_repository(scale.boundary(scale.DEEP_PARENT), scale.DEEP)
        print(scale.grow_history(scale.DEEP, args.commits), flush=True)
        oldest = scale.boundary(scale.DEEP_PARENT).snapshots(scale.DEEP)[0].short_name
        commands = {**COMMANDS, "cat --commit OLDEST": ["cat", scale.DEEP, scale.FILE, "--commit", oldest]}
        for i in range(args.siblings):
            scale.zfs_cmd("create", "-o", "canmount=off", f"{scale.DEEP_PARENT}/other-{i:05d}")
        with tempfile.TemporaryDirectory(prefix="dsg-ab-cli-") as tmp:
            runs = {name: installed(tree, Path(tmp), name) for name, tree in trees.items()}
            for cli, env in runs.values():
                for argv in commands.values():
                    run_once([*cli, *argv], env, Path(tmp))
            took: dict[tuple[str, str], list[float]] = {(c, t): [] for c in commands for t in trees}
            for n in range(args.rounds):
                for name in ("before", "after") if n % 2 == 0 else ("after", "before"):
                    cli, env = runs[name]
                    for command, argv in commands.items():
                        took[command, name].append(run_once([*cli, *argv], env, Path(tmp)))
                scale.note(f"round {n + 1}/{args.rounds}")
        print(f"\n{args.commits + 1} commits, {args.siblings} siblings, {args.rounds} rounds (median ms)")
        print(f"{'command':<20} {'before':>9} {'after':>9} {'after/before':>13}")
        for command in commands:
            before, after = (statistics.median(took[command, t]) for t in ("before", "after"))
            print(f"{command:<20} {before:>9.1f} {after:>9.1f} {after / before:>12.3f}x")
    finally:
        scale.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
