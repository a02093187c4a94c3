"""Pruning a repository's commits by a retention policy: the executor of ``retention.plan``.

``prune(repo, policy)`` reads the commits and what protects them, asks the planner, and
destroys the rest in one ZFS sync task (a channel-program batch; very long lists in
batches of ``chunk`` destroys, each its own sync task). Never destroyed: the latest
commit, a snapshot with a ZFS hold, a snapshot something is cloned from (an open
transaction's workspace, a user's clone), a commit marked to keep (``mark_keep``, the
``dsg-storage:keep=yes`` user property) and anything that is not a commit snapshot
(``@dsg-base-`` snapshots of open transactions, users' own snapshots).

After a crash: destroys are the only changes, each batch destroys only commits the plan
let go, and the latest is never among them; so an interrupted prune leaves a subset of
the commits that still contains every protected one and the latest. Running it again
finishes the job. A destroy ZFS refuses at the last moment (a hold taken meanwhile) is
skipped and reported, never forced.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Mapping, Sequence

import attrs

from .. import names as _names
from ..errors import InvalidArgumentError, InvalidNameError, RepositoryNotFoundError, ZfsError
from ..names import P_KEEP, P_RETENTION
from ..zfs.port import Batch, Snapshot
from . import status
from .repository import Repository
from .retention import Candidate, Plan, RetentionPolicy, plan

#: Destroys per sync task; ZFS bounds a channel program's instructions and memory.
DEFAULT_CHUNK = 500


@attrs.frozen
class PruneResult:
    repository: str
    dry_run: bool
    plan: Plan
    destroyed: tuple[str, ...]
    skipped: Mapping[str, str]  # name -> why ZFS refused
    steps: tuple[str, ...]  # the ZFS steps taken (or, with dry_run, that would be)


def stored_policy(repo: Repository) -> RetentionPolicy | None:
    """The policy saved on the repository (``dsg-storage:retention``), or None."""
    props = repo.zfs.get_props(repo.name, [P_RETENTION])
    if props is None:
        raise RepositoryNotFoundError(f"repository {repo.name} does not exist", dataset=repo.name)
    text = props.get(P_RETENTION)
    if not text:
        return None
    try:
        return RetentionPolicy.parse(str(text))
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(
            f"{repo.name}: the stored retention policy is unreadable ({exc.message})",
            dataset=repo.name,
            hint=f"store a new one with 'dsg-storage prune {repo.name} --keep-... --save-policy'",
        ) from None


def save_policy(repo: Repository, policy: RetentionPolicy | None) -> None:
    """Store ``policy`` on the repository (None removes it). One sync task."""
    if not repo.exists():
        raise RepositoryNotFoundError(f"repository {repo.name} does not exist", dataset=repo.name)
    with repo.exclusive():
        repo.zfs.apply(Batch().set(repo.name, {P_RETENTION: policy.format() if policy else ""}))


def mark_keep(repo: Repository, commit: str, *, keep: bool = True) -> str:
    """Mark commit ``commit`` (its name after '@', or the full name) to be kept by every
    prune (``dsg-storage:keep=yes``), or remove the mark. Returns the snapshot's full name."""
    short = commit.split("@", 1)[1] if "@" in commit else commit
    if commit.split("@", 1)[0] not in (short, repo.name) or not _names.is_commit_snapshot(short):
        raise InvalidNameError(f"{commit!r} is not a commit of {repo.name} (see 'dsg-storage history {repo.name}')")
    snapshot = f"{repo.name}@{short}"
    if snapshot not in {c.snapshot for c in repo.history()}:
        raise RepositoryNotFoundError(f"{snapshot} does not exist", dataset=snapshot)
    with repo.exclusive():
        repo.zfs.apply(Batch().set(snapshot, {P_KEEP: "yes" if keep else ""}))
    return snapshot


def _protections(repo: Repository, seen: Sequence[Snapshot]) -> dict[str, str]:
    """Snapshots that must stay, with why: holds, clones, keep marks (of the repository's
    own snapshots among ``seen``, read ``guarded``)."""
    protected: dict[str, str] = {}
    own = [snap for snap in seen if snap.name.startswith(f"{repo.name}@")]
    for snap in own:
        if snap.holds is None or snap.clones is None:
            raise ZfsError(f"{snap.name} was listed without its holds and clones", dataset=repo.name)
        if snap.holds:
            protected[snap.name] = f"held ({snap.holds} hold{'s' if snap.holds > 1 else ''})"
        elif snap.clones:
            workspaces = [c for c in snap.clones if (_names.parse_temporary(c) or ("", "", ""))[1] == "ws"]
            protected[snap.name] = f"open transaction {workspaces[0]}" if workspaces else f"origin of {snap.clones[0]}"
        elif snap.user_props.get(P_KEEP) == "yes":
            protected[snap.name] = "marked keep"
    return protected


def prune(
    repo: Repository,
    policy: RetentionPolicy | None = None,
    *,
    dry_run: bool = False,
    chunk: int = DEFAULT_CHUNK,
    on_step: Callable[[str], None] | None = None,
) -> PruneResult:
    """Destroy the commits of ``repo`` that ``policy`` (default: the stored one) lets go.

    Interrupted steps are recovered first (a half-finished commit becomes a finished one
    before anything is planned). The plan and the destroys run under the repository's
    step lock, so no begin or commit runs in between. With ``dry_run`` nothing is
    changed: the result says what would be destroyed. ``on_step`` is called after each
    step (``"recovered"``, ``"planned"``, ``"destroyed K/N"``), e.g. to observe progress.
    """
    if chunk < 1:
        raise InvalidArgumentError(f"chunk must be at least 1, not {chunk}")
    step = on_step or (lambda _: None)
    policy = policy or stored_policy(repo)
    if policy is None:
        raise InvalidArgumentError(
            f"{repo.name} has no stored retention policy and none was given",
            dataset=repo.name,
            hint="give --keep-* rules (and --save-policy to store them)",
        )
    if not dry_run:
        repo.recover()
        step("recovered")
    with repo.exclusive():
        # one read for the commits, their keep marks, holds and clones (by commands: one
        # zfs get, each walk of the snapshots costing about the same whatever it asks)
        seen = status.snapshots(repo.zfs, repo.name, guarded=True)
        history = status.commits_named(repo.name, seen)
        decided = plan(
            [Candidate(c.snapshot, c.committed) for c in history], policy, protected=_protections(repo, seen)
        )
        doomed = decided.destroy
        steps = tuple(f"destroy {name}" for name in doomed)
        step("planned")
        if dry_run or not doomed:
            return PruneResult(repo.name, dry_run, decided, (), {}, steps)
        destroyed: list[str] = []
        skipped: dict[str, str] = {}
        batches = [doomed[i : i + chunk] for i in range(0, len(doomed), chunk)]
        for number, names in enumerate(batches, start=1):
            batch = Batch()
            for name in names:
                batch = batch.destroy(name, required=False)  # refused (a new hold): skipped, not fatal
            result = repo.zfs.apply(batch)
            skipped.update({name: _why(code) for name, code in result.skipped.items()})
            destroyed += [name for name in names if name not in result.skipped]
            step(f"destroyed {number}/{len(batches)}")
        return PruneResult(repo.name, dry_run, decided, tuple(destroyed), skipped, steps)


def _why(code: int) -> str:
    if code == errno.EBUSY:
        return "held (a hold was taken after the plan)"
    if code == errno.EEXIST:
        return "has dependent clones"
    return os.strerror(code)
