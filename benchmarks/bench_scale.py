#!/usr/bin/env python3
"""What dsg-storage's commands cost as the pool grows: many repositories, a long history.

Run against real ZFS (inside the VM when this machine has none):

    ./testpool/run --pool-size 16G python3 benchmarks/bench_scale.py   # 1,000 repositories, 10,000 commits
    ./testpool/run python3 benchmarks/bench_scale.py --quick    # 50 and 500: a smoke test
    ./testpool/run python3 benchmarks/bench_scale.py --repos 200 --commits 2000 --rounds 5

Everything lives under ``dsgtest/bench-scale``, destroyed first and at the end:

1. ``many/r0000`` .. (``--repos``): r0000 is made by a library init (the inherited
   layout, one file); the others are created from it, 16 at a time, with its own
   ``dsg-storage:*`` properties (its name, mountpoint and transaction id replaced by
   theirs), its commit snapshot with that snapshot's properties (one sync task per 100),
   mounted where their record says and owned as recorded. Before anything is timed, the
   library must list all of them as repositories and plan nothing for the first, the
   middle and the last; every timed ``recover --pool`` must say "nothing to recover" for
   each. Timed: ``recover --pool dsgtest`` with nothing to do, and with 10 interrupted
   transactions (begins SIGKILLed right after their clone, made anew before each such
   run, untimed), against ``zfs list -r many`` (and ``zfs list -r -H -o name many``,
   which skips the fetch of each dataset's properties that any read of them pays);
   ``status REPO`` of the middle one against ``zfs list REPO``.
2. ``history/repo`` with ``--commits`` commits after its init: commit snapshots
   (``dsg-commit-<UTC time>`` with ``dsg-storage:tx`` and ``dsg-storage:committed``, as
   ``core.records.commits_of`` reads them) taken one sync task each, since ZFS takes one
   snapshot of a dataset per transaction group; the longest part of the set-up, so it
   runs while part 1 is built. Snapshots of one dataset cost pool metadata faster than
   their count grows (1.2 GB at 5,000, ~4 GB for the default 10,000): the test pool's
   1 GiB fills at ~4,000, so run bigger histories on a bigger pool (``--pool-size``, as
   above: in the VM the pool then has a disk of its own, as the image's disk holds only
   ~5,000). A pool that fills up stops the run with a
   message, not a traceback. Timed: ``history``, ``status``, ``prune --keep-last 5
   --dry-run`` and ``cat FILE --commit OLDEST`` (the init's commit), and the library's
   ``Repository.history()`` and ``prune(..., dry_run=True)`` in this process (what a
   sync tool that imports us pays: its bindings loaded), against ``zfs list -t snapshot
   REPO`` (and by name alone, as in part 1).
3. What one sync begin+commit does, counted in this process on r0000 (among its
   siblings) and on the long history: sync tasks (the boundary's ``BoundarySteps``),
   read-only channel programs (``Zfs.program`` with ``sync=False``), ``exists`` ioctls,
   ``zfs`` commands, mounts, unmounts and read-only remounts (the commit's freeze and
   thaw), and how long each took.

Commands are fresh processes timed from spawn to exit, run as ``bench_cli.py`` runs them
(the package copied to this machine's disk, bytecode cached by an untimed run of each
command on r0000). All of parts 1 and 2 run interleaved, round after round; medians are
printed with their ratio to the ``zfs`` command beside them. A command whose first run
took longer than ``--slow`` seconds is not run again (its n says so), and one that fails
is reported and dropped, so that the benchmark finishes unattended.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from bench_cli import console_script, install

from dsg_storage import DsgStorageError, Repository, RetentionPolicy, names, prune
from dsg_storage.core.options import Owner, parse_mode
from dsg_storage.core.pool import repositories_in
from dsg_storage.core.records import RepositoryStatus
from dsg_storage.core.status import status
from dsg_storage.errors import NoSpaceError
from dsg_storage.names import P_COMMITTED, P_MODE, P_OWNER, P_TX
from dsg_storage.zfs.boundary import Zfs, open_zfs, zfs_version
from dsg_storage.zfs.host import BoundaryStep
from dsg_storage.zfs.port import Batch

T = TypeVar("T")
R = TypeVar("R")

POOL = "dsgtest"
ROOT = f"{POOL}/bench-scale"
MANY = f"{ROOT}/many"  # the --repos repositories
DEEP_PARENT = f"{ROOT}/history"
DEEP = f"{DEEP_PARENT}/repo"  # the repository with --commits commits
MOUNT_BASE = Path("/var/tmp/dsg-bench-scale")
FILE, CONTENT = "data.txt", "benchmark\n"
INTERRUPTED = 10
THREADS = 16
SNAPSHOTS_PER_TASK = 100
#: What init creates its dataset with besides the record (``patterns._creation_props``;
#: the inherited layout sets no mountpoint).
NATIVE: dict[str, str | int] = {"atime": 0}
#: Boundary steps (``BoundaryStep.op``) on mounts, by what they are.
MOUNT_OPS = {"mount": "mounts", "unmount": "unmounts", "detach": "unmounts", "freeze": "remounts", "thaw": "remounts"}
COUNTED = ("sync tasks", "read programs", "exists", "zfs commands", "mounts", "unmounts", "remounts")


# ------------------------------------------------------------------ pure helpers
def repo_names(count: int, parent: str = MANY) -> list[str]:
    """``parent/r0000`` .. in sorting order (zero-padded)."""
    width = max(4, len(str(count - 1)))
    return [f"{parent}/r{n:0{width}d}" for n in range(count)]


def mount_of(dataset: str) -> str:
    """Where a dataset under ROOT is mounted: it inherits ROOT's mountpoint."""
    return str(MOUNT_BASE / dataset.removeprefix(ROOT + "/"))


def renamed(props: Mapping[str, str], changes: Mapping[str, str]) -> dict[str, str]:
    """``props`` with every occurrence of each key of ``changes`` in a value replaced by
    its value: a repository's record made another's (name, mountpoint, transaction id)."""
    out = {}
    for key, value in props.items():
        for old, new in changes.items():
            value = value.replace(old, new)
        out[key] = value
    return out


def next_commit_time(last: datetime | None, now: datetime) -> datetime:
    """``now``, unless it does not sort after ``last`` in a commit snapshot's name
    (milliseconds): then a millisecond after ``last``."""
    if last is None:
        return now
    floor = last.replace(microsecond=last.microsecond // 1000 * 1000) + timedelta(milliseconds=1)
    return max(now, floor)


def evenly(items: Sequence[T], count: int) -> list[T]:
    """``count`` items spread over ``items`` (all of them if there are fewer)."""
    if count >= len(items):
        return list(items)
    return [items[n * len(items) // count] for n in range(count)]


def mount_kind(op: str) -> str | None:
    """What a boundary step does to mounts (a column of part 3), None if nothing."""
    return MOUNT_OPS.get(op)


def lines_ending(out: str, suffix: str) -> int:
    return sum(1 for line in out.splitlines() if line.endswith(suffix))


def status_problem(seen: RepositoryStatus, mountpoint: str) -> str | None:
    """What keeps ``seen`` from being a committed repository, idle, mounted at
    ``mountpoint``; None if nothing."""
    checks = [
        (seen.exists, "it does not exist"),
        (seen.last_commit is not None, "it has no commit"),
        (seen.owner is not None, "it records no owner"),
        (mountpoint in seen.mounted_at, f"it is not mounted at {mountpoint} ({list(seen.mounted_at)})"),
        (not seen.pending, f"it has transactions open: {[p.tx for p in seen.pending]}"),
        (not seen.leftovers, f"it has leftovers: {list(seen.leftovers)}"),
        (not seen.replica, "it is taken for a replica"),
    ]
    return next((why for ok, why in checks if not ok), None)


def ratio_text(value: float, base: float | None) -> str:
    return f"{value / base:6.2f}x" if base else "      -"


# ------------------------------------------------------------------ the cases
@dataclasses.dataclass
class Case:
    """One command timed in every round, held to its ``baseline`` (another case's label)."""

    label: str
    argv: list[str]  # a command, timed from spawn to exit; or, with ``call``, nothing
    baseline: str | None = None
    also: str | None = None  # a second baseline, its ratio printed after the first
    per: int = 0  # also print the median per this many (repositories)
    prepare: Callable[[], None] | None = None  # untimed, before each run
    check: Callable[[str], str | None] | None = None  # its output -> the problem, if any
    call: Callable[[], str] | None = None  # the library in this process instead: its output
    samples: list[float] = dataclasses.field(default_factory=list)
    error: str | None = None

    def row(self, medians: Mapping[str, float]) -> str:
        if not self.samples:
            return f"{self.label:<52} failed: {self.error}"
        value = medians[self.label]
        base = medians.get(self.baseline or "")
        vs = f"{self.baseline or '':<38} {ratio_text(value, base)}" if self.baseline else ""
        each = f"  ({value / self.per * 1000:.1f} ms per repository)" if self.per else ""
        also = medians.get(self.also or "")
        second = f"  ({ratio_text(value, also).strip()} {self.also})" if also else ""
        stopped = f"  (stopped: {self.error})" if self.error else ""
        return f"{self.label:<52} {len(self.samples):>2} {value * 1000:>10.1f}  {vs}{second}{each}{stopped}".rstrip()


class CommandFailed(Exception):
    pass


@dataclasses.dataclass
class Runner:
    """Runs a command as a fresh process: (seconds from spawn to exit, its stdout)."""

    env: dict[str, str]
    cwd: Path

    def __call__(self, argv: Sequence[str]) -> tuple[float, str]:
        started = time.perf_counter()
        done = subprocess.run(argv, env=self.env, cwd=self.cwd, capture_output=True, check=False)
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            err = done.stderr.decode(errors="replace").strip().splitlines()
            raise CommandFailed(f"exit {done.returncode}: {err[-1] if err else '(no message)'}")
        return elapsed, done.stdout.decode(errors="replace")


def in_process(call: Callable[[], str]) -> tuple[float, str]:
    """A library call timed in this process (bindings loaded, bytecode cached: what a
    long-running caller such as a sync tool pays): (seconds, what it returned)."""
    started = time.perf_counter()
    try:
        out = call()
    except DsgStorageError as exc:
        raise CommandFailed(f"{type(exc).__name__}: {exc}") from exc
    return time.perf_counter() - started, out


def measure(cases: Sequence[Case], run: Callable[[Sequence[str]], tuple[float, str]], rounds: int, slow: float) -> None:
    """Every case once per round, in order, rounds after rounds (drift hits all alike)."""
    for r in range(rounds):
        for case in cases:
            if case.error:
                continue
            note(f"round {r + 1}/{rounds}: {case.label}")
            try:
                if case.prepare:
                    case.prepare()
                seconds, out = in_process(case.call) if case.call else run(case.argv)
                problem = case.check(out) if case.check else None
            except CommandFailed as exc:
                case.error = str(exc)
                continue
            if problem:  # the figure would not be what it says: reported, never repeated
                case.error = f"unexpected output: {problem}"
            elif seconds > slow and not case.samples:
                case.error = f"its first run took over --slow {slow:g} s: not repeated"
            if not problem:
                case.samples.append(seconds)


def report(title: str, cases: Sequence[Case]) -> None:
    medians = {c.label: statistics.median(c.samples) for c in cases if c.samples}
    print(f"\n{title}")
    print(f"{'command':<52} {'n':>2} {'median ms':>10}  {'vs':<38} {'ratio':>7}")
    for case in cases:
        print(case.row(medians), flush=True)


# ------------------------------------------------------------------ ZFS helpers
def note(text: str) -> None:
    print(f"[bench_scale {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def zfs_cmd(*args: str) -> None:
    subprocess.run(["zfs", *args], check=True, capture_output=True)


def in_threads(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``fn`` over ``items`` in THREADS threads: libzfs_core calls release the GIL, and
    ZFS groups concurrent sync tasks into one transaction group."""
    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(fn, items))


def boundary(allow: str) -> Zfs:
    return open_zfs(allow)


def init_repository(zfs: Zfs, name: str) -> None:
    with Repository(name, zfs=zfs).begin(mountpoint=mount_of(name), owner=(0, 0), mode=0o755) as tx:
        Path(tx.path, FILE).write_text(CONTENT)


@dataclasses.dataclass(frozen=True)
class Template:
    """A repository made by the library: its own user properties and its commit's."""

    name: str
    props: dict[str, str]
    commit: str  # the commit snapshot's short name
    commit_props: dict[str, str]

    @classmethod
    def read(cls, zfs: Zfs, name: str) -> Template:
        own = zfs.filesystems(name, user_prefix="")[name]
        (commit,) = zfs.snapshots(name, user_prefix="")
        return cls(name, {k: v for k, v in own.items() if ":" in k}, commit.short_name, dict(commit.user_props))

    def like(self, name: str) -> tuple[dict[str, str | int], dict[str, str]]:
        """(creation properties, commit snapshot properties) of ``name`` made like it."""
        changes = {self.name: name, mount_of(self.name): mount_of(name)}
        if self.props.get(P_TX):
            changes[self.props[P_TX]] = names.new_tx_id()
        return {**NATIVE, **renamed(self.props, changes)}, renamed(self.commit_props, changes)


def build_many(count: int) -> list[str]:
    """``count`` committed repositories under MANY: one init, the rest made like it."""
    zfs = boundary(MANY)
    repos = repo_names(count)
    started = time.perf_counter()
    init_repository(zfs, repos[0])
    template = Template.read(zfs, repos[0])
    made = {name: template.like(name) for name in repos[1:]}
    in_threads(lambda name: zfs.create(name, made[name][0]), repos[1:])
    created = time.perf_counter()
    for start in range(1, count, SNAPSHOTS_PER_TASK):
        batch = Batch()
        for name in repos[start : start + SNAPSHOTS_PER_TASK]:
            batch = batch.snapshot(f"{name}@{template.commit}", made[name][1])
        zfs.apply(batch)
    snapped = time.perf_counter()
    owner, mode = Owner.parse_ids(template.props[P_OWNER]), parse_mode(template.props[P_MODE])

    def place(name: str) -> None:
        zfs.host.mount(name, mount_of(name))
        zfs.host.apply_owner(name, mount_of(name), owner.uid, owner.gid, mode)

    in_threads(place, repos[1:])
    print(
        f"set-up: {count} repositories in {time.perf_counter() - started:.1f} s (created {created - started:.1f} s, "
        f"commit snapshots {snapped - created:.1f} s, mounted {time.perf_counter() - snapped:.1f} s)",
        flush=True,
    )
    return repos


def grow_history(name: str, count: int) -> str:
    """``count`` commits on ``name`` after its init, one sync task each; returns what it took."""
    zfs = boundary(DEEP_PARENT)
    (first,) = zfs.snapshots(name)
    last: datetime | None = datetime.fromisoformat(first.user_props[P_COMMITTED])
    started = time.perf_counter()
    for n in range(count):
        when = next_commit_time(last, datetime.now(UTC))
        props = {P_TX: names.new_tx_id(when), P_COMMITTED: when.isoformat(timespec="milliseconds")}
        zfs.snapshot([names.commit_snapshot(name, when)], props)
        last = when
        if (n + 1) % max(1, count // 20) == 0:
            rate = (n + 1) / (time.perf_counter() - started)
            note(f"{n + 1}/{count} commits, {rate:.1f} per s, {(count - n - 1) / rate:.0f} s to go")
    took = time.perf_counter() - started
    return f"set-up: {count} commits in {took:.1f} s ({count / took:.1f} per s, one sync task each)"


def verify_many(repos: list[str]) -> None:
    """The library takes every one of them for a repository, idle and in place."""
    zfs = boundary(MANY)
    found = repositories_in(zfs, POOL)
    if found != repos:
        raise SystemExit(f"bench_scale: the library recognizes {len(found)} of the {len(repos)} repositories")
    for name in (repos[0], repos[len(repos) // 2], repos[-1]):
        problem = status_problem(status(zfs, name), mount_of(name))
        steps = Repository(name, zfs=zfs).plan("recover")
        if problem or steps:
            raise SystemExit(f"bench_scale: {name} is not an idle repository: {problem or steps}")


def killed_begin(name: str) -> int:
    """Fork a child that begins a transaction on ``name`` and is SIGKILLed right after
    the clone (its workspace): an interrupted begin, which recovery undoes."""
    pid = os.fork()
    if pid == 0:  # the child: never returns
        try:
            zfs = boundary(MANY)

            def stop(step: BoundaryStep) -> None:
                if step.op == "clone":
                    os.kill(os.getpid(), signal.SIGKILL)

            zfs.steps.observer = stop
            Repository(name, zfs=zfs).begin()
        except BaseException:  # noqa: BLE001  reported; the parent sees exit 1, not a kill
            traceback.print_exc()
        finally:
            os._exit(1)
    return pid


def interrupt(targets: Sequence[str]) -> None:
    """Leave one interrupted begin on each of ``targets``; CommandFailed if that is not
    what the pool then shows (nor if the previous recovery left any)."""
    for pid in [killed_begin(name) for name in targets]:
        _, code = os.waitpid(pid, 0)
        if not (os.WIFSIGNALED(code) and os.WTERMSIG(code) == signal.SIGKILL):
            raise CommandFailed(f"a begin meant to be killed ended by itself (wait status {code})")
    left = [n for n in boundary(MANY).filesystems(MANY) if ".dsg-" in n]
    if len(left) != len(targets):
        raise CommandFailed(f"expected {len(targets)} interrupted transactions, the pool shows {left}")


def teardown() -> None:
    """Destroy everything under ROOT: the repositories 16 at a time (their sync tasks
    share transaction groups), then the rest with one ``zfs destroy``."""
    note("destroying the datasets")
    try:
        zfs = boundary(ROOT)
        in_threads(zfs.destroy_with_snapshots, [n for n in zfs.filesystems(MANY) if n != MANY])
    except Exception as exc:  # noqa: BLE001  whatever is left, zfs destroy -R takes
        note(f"teardown: {exc}; zfs destroy -R takes the rest")
    subprocess.run(["zfs", "destroy", "-R", "-f", ROOT], capture_output=True, check=False)
    for path in (MOUNT_BASE / "many", MOUNT_BASE / "history", MOUNT_BASE):
        try:
            path.rmdir()
        except OSError:
            pass


# ------------------------------------------------------------------ parts 1 and 2
def cli_runner(tmp: Path) -> tuple[Runner, list[str]]:
    """The environment and the command ``bench_cli.py`` times ``dsg-storage`` with."""
    env = {**os.environ, "DSG_STORAGE_QUEUE": str(tmp / "queue" / "queue.sqlite")}
    env.pop("DSG_STORAGE_ALLOW", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
    install(tmp / "site", env)
    return Runner(env, tmp), console_script(tmp)


def warm_up(run: Runner, cli: list[str], repo: str, commit: str) -> None:
    """One untimed run of each command on a small repository: the bytecode cache."""
    for argv in (
        ["status", repo],
        ["recover", repo],
        ["history", repo],
        ["cat", repo, FILE, "--commit", commit],
        ["prune", repo, "--keep-last", "5", "--dry-run"],
    ):
        try:
            run([*cli, "--allow", MANY, *argv])
        except CommandFailed as exc:  # its timed runs will say so
            note(f"warm-up: {' '.join(argv)}: {exc}")


def many_cases(cli: list[str], repos: list[str]) -> list[Case]:
    count, one = len(repos), repos[len(repos) // 2]
    targets = evenly([r for r in repos[1:] if r != one], INTERRUPTED)  # status reads `one`
    recover = [*cli, "--allow", MANY, "recover", "--pool", POOL]
    # The goal's baseline lists what any read of properties must fetch; by name alone
    # zfs skips that fetch for each dataset (about 4x cheaper): both are printed.
    listing, names_only = "zfs list -r PARENT", "zfs list -r -H -o name PARENT"

    def idle(out: str) -> str | None:
        n = lines_ending(out, ": nothing to recover")
        return None if n == count else f"{n} of {count} repositories had nothing to recover"

    def undone(out: str) -> str | None:
        n, rest = lines_ending(out, ": interrupted begin undone"), lines_ending(out, ": nothing to recover")
        return None if (n, rest) == (len(targets), count - len(targets)) else f"{n} begins undone, {rest} idle"

    return [
        Case(f"dsg-storage recover --pool {POOL}, idle", recover, listing, names_only, per=count, check=idle),
        Case(
            f"dsg-storage recover --pool {POOL}, {len(targets)} interrupted",
            recover,
            listing,
            names_only,
            per=count,
            prepare=lambda: interrupt(targets),
            check=undone,
        ),
        Case(listing, ["zfs", "list", "-r", MANY], check=expect_lines(count + 2)),  # and its header
        Case(names_only, ["zfs", "list", "-r", "-H", "-o", "name", MANY], check=expect_lines(count + 1)),
        Case("dsg-storage status REPO", [*cli, "status", one], "zfs list REPO", check=idle_status),
        Case("zfs list REPO", ["zfs", "list", one]),
    ]


def deep_cases(cli: list[str], commits: int, oldest: str) -> list[Case]:
    ours = [*cli, "--allow", DEEP_PARENT]
    zfs = boundary(DEEP_PARENT)
    listing, names_only = "zfs list -t snapshot REPO", "zfs list -t snapshot -H -o name REPO"  # as in part 1
    return [
        Case(
            "dsg-storage history REPO", [*ours, "history", DEEP], listing, names_only, check=expect_lines(commits + 1)
        ),
        Case("dsg-storage status REPO", [*ours, "status", DEEP], listing, names_only, check=idle_status),
        Case(
            "dsg-storage prune REPO --keep-last 5 --dry-run",
            [*ours, "prune", DEEP, "--keep-last", "5", "--dry-run"],
            listing,
            names_only,
        ),
        Case(
            "dsg-storage cat REPO FILE --commit OLDEST",
            [*ours, "cat", DEEP, FILE, "--commit", oldest],
            listing,
            names_only,
            check=lambda out: None if out == CONTENT else f"read {out!r}",
        ),
        Case(
            "Repository.history() (library)",
            [],
            listing,
            names_only,
            call=lambda: "\n".join(c.snapshot for c in Repository(DEEP, zfs=zfs).history()),
            check=expect_lines(commits + 1),
        ),
        Case(
            "prune(keep last 5, dry_run=True) (library)",
            [],
            listing,
            names_only,
            call=lambda: "\n".join(
                prune(Repository(DEEP, zfs=zfs), RetentionPolicy(last=5), dry_run=True).plan.destroy
            ),
            check=expect_lines(commits + 1 - 5),
        ),
        Case(listing, ["zfs", "list", "-t", "snapshot", DEEP], check=expect_lines(commits + 2)),
        Case(names_only, ["zfs", "list", "-t", "snapshot", "-H", "-o", "name", DEEP], check=expect_lines(commits + 1)),
    ]


def expect_lines(count: int) -> Callable[[str], str | None]:
    return lambda out: None if len(out.splitlines()) == count else f"{len(out.splitlines())} lines, not {count}"


def idle_status(out: str) -> str | None:
    if "last commit: -" in out or "pending:     0" not in out:
        return f"not an idle committed repository:\n{out}"
    return None


# ------------------------------------------------------------------ part 3
class Meter:
    """Counts what a ``Zfs`` boundary does: its steps (sync tasks, mounts) and reads."""

    def __init__(self, zfs: Zfs) -> None:
        self.zfs = zfs
        self.tally: collections.Counter[str] = collections.Counter()
        zfs.steps.observer = self._step
        program = zfs.program

        def counted(pool: str, source: str, args: Sequence[str], *, sync: bool, **kwargs: Any) -> object:
            self.tally["sync programs" if sync else "read programs"] += 1
            return program(pool, source, args, sync=sync, **kwargs)

        zfs.program = counted  # type: ignore[method-assign]
        self._count("exists", "exists")
        self._count("_zfs_command", "zfs commands")

    def _count(self, attr: str, key: str) -> None:
        fn = getattr(self.zfs, attr)

        def counted(*args: object, **kwargs: object) -> object:
            self.tally[key] += 1
            return fn(*args, **kwargs)

        setattr(self.zfs, attr, counted)

    def _step(self, step: BoundaryStep) -> None:
        kind = mount_kind(step.op)
        if kind:
            self.tally[kind] += 1

    def run(self, fn: Callable[[], T]) -> tuple[T, float, collections.Counter[str]]:
        before, syncs = self.tally.copy(), self.zfs.steps.syncs
        started = time.perf_counter()
        result = fn()
        took = time.perf_counter() - started
        counts = self.tally - before
        counts["sync tasks"] = self.zfs.steps.syncs - syncs
        return result, took, counts


def count_transaction(name: str, allow: str) -> list[tuple[str, float, collections.Counter[str]]]:
    meter = Meter(boundary(allow))
    repo = Repository(name, zfs=meter.zfs)
    tx, begin_took, begin = meter.run(repo.begin)
    Path(tx.path, FILE).write_text("changed\n")
    _, commit_took, commit = meter.run(lambda: tx.commit("bench_scale"))
    return [
        ("begin", begin_took, begin),
        ("commit", commit_took, commit),
        ("begin+commit", begin_took + commit_took, begin + commit),
    ]


def report_counts(contexts: Sequence[tuple[str, str, str]]) -> None:
    print("\n3. one sync begin + commit, counted in this process")
    print(f"{'where':<30} {'step':<13} {'ms':>8} " + " ".join(f"{c:>13}" for c in COUNTED))
    for where, name, allow in contexts:
        try:
            rows = count_transaction(name, allow)
        except DsgStorageError as exc:
            print(f"{where:<30} failed: {exc}", flush=True)
            continue
        for step, took, counts in rows:
            cells = " ".join(f"{counts[c]:>13}" for c in COUNTED)
            print(f"{where:<30} {step:<13} {took * 1000:>8.1f} {cells}", flush=True)


# ------------------------------------------------------------------ main
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repos", type=int, help="repositories in the pool (default 1000; --quick 50)")
    parser.add_argument("--commits", type=int, help="commits of the long history (default 10000; --quick 500)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median reported)")
    parser.add_argument(
        "--slow", type=float, default=30.0, help="seconds: a command slower at its first run is not repeated"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    args = parser.parse_args()
    args.repos = args.repos or (50 if args.quick else 1000)
    args.commits = args.commits or (500 if args.quick else 10000)
    if args.repos <= INTERRUPTED or args.commits < 1 or args.rounds < 1:
        parser.error(f"--repos must exceed {INTERRUPTED}, --commits and --rounds be at least 1")
    return args


def build(args: argparse.Namespace) -> list[str]:
    """Both parts' datasets; the long history grows while the repositories are made."""
    subprocess.run(["zfs", "destroy", "-R", "-f", ROOT], capture_output=True, check=False)
    zfs_cmd("create", "-p", "-o", f"mountpoint={MOUNT_BASE}", ROOT)
    zfs_cmd("create", MANY)
    zfs_cmd("create", DEEP_PARENT)
    init_repository(boundary(DEEP_PARENT), DEEP)
    with ThreadPoolExecutor(1) as background:
        growing = background.submit(grow_history, DEEP, args.commits)
        repos = build_many(args.repos)
        print(growing.result(), flush=True)
    verify_many(repos)
    return repos


def run(args: argparse.Namespace, tmp: Path) -> None:
    print(
        f"bench_scale: {args.repos} repositories, {args.commits} commits, {args.rounds} interleaved rounds "
        f"(median; ZFS {zfs_version()}, {sys.executable} {sys.version.split()[0]})",
        flush=True,
    )
    repos = build(args)
    runner, cli = cli_runner(tmp)
    zfs = boundary(ROOT)
    oldest = zfs.snapshots(DEEP)[0].short_name
    warm_up(runner, cli, repos[0], zfs.snapshots(repos[0])[0].short_name)
    many, deep = many_cases(cli, repos), deep_cases(cli, args.commits, oldest)
    measure([*many, *deep], runner, args.rounds, args.slow)
    report(f"1. {args.repos} repositories in one pool: PARENT is {MANY}, REPO {repos[len(repos) // 2]}", many)
    report(f"2. one repository with {args.commits + 1} commits: REPO is {DEEP}", deep)
    report_counts(
        [(f"among {args.repos} repositories", repos[0], MANY), (f"with {args.commits + 1} commits", DEEP, DEEP_PARENT)]
    )


def main() -> int:
    args = parse_args()
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="dsg-bench-scale-") as tmp:
            run(args, Path(tmp))
    except NoSpaceError as exc:
        print(
            f"bench_scale: the pool filled up ({exc}); --repos {args.repos} and --commits {args.commits} "
            "need a bigger pool than this one: see the docstring",
            file=sys.stderr,
        )
        return 1
    finally:
        teardown()
        print(f"\ntotal {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
