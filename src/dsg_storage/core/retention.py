"""Retention: which commits to keep, decided apart from destroying them.

A ``RetentionPolicy`` says how many commits to keep: the newest ``last``, and the newest
commit in each of the newest ``hourly``/``daily``/``weekly``/``monthly``/``yearly``
periods that hold a commit, in UTC (restic's ``forget --keep-*`` and sanoid's semantics: a period
without a commit does not use up a slot). ``plan`` is a pure function from commits (their
``dsg-storage:committed`` times) and protections to a ``Plan``: every commit with the
reasons it is kept, or marked for destruction. It never marks the latest commit, and it
keeps commits whose time cannot be read (a time nobody can place is no reason to destroy).

Worked example: commits at 2026-11-20 09:00, 2026-11-20 18:00, 2026-11-21 08:00 and
2026-11-21 10:00 with ``RetentionPolicy(daily=2)``: the newest of 11-21 (10:00) and the
newest of 11-20 (18:00) are kept; 11-20 09:00 and 11-21 08:00 are destroyed.

The policy can be stored on the repository as ``dsg-storage:retention`` (``format``/
``parse``: ``"last=3 daily=7 weekly=4"``), so that ``prune`` with no flags applies it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import attrs

from ..errors import InvalidArgumentError
from .periods import PERIODS  # bucket kinds, in the order reasons are listed

#: Bound on any count (and on the stored property): a policy read from a pool is untrusted.
MAX_COUNT = 1_000_000
MAX_POLICY_TEXT = 200


def _period_key(kind: str, when: datetime) -> tuple[int, ...]:
    """The period of ``kind`` that ``when`` (UTC) falls in."""
    if kind == "hourly":
        return (when.year, when.month, when.day, when.hour)
    if kind == "daily":
        return (when.year, when.month, when.day)
    if kind == "weekly":
        iso = when.isocalendar()  # ISO weeks start on Monday, as restic's do
        return (iso.year, iso.week)
    if kind == "monthly":
        return (when.year, when.month)
    return (when.year,)


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise InvalidArgumentError(f"a retention count must be a whole number from 0 to {MAX_COUNT}, not {value!r}")
    return value


@attrs.frozen
class RetentionPolicy:
    """How many commits to keep; 0 means none for that rule. Validated on creation."""

    last: int = attrs.field(default=0, converter=_count)
    hourly: int = attrs.field(default=0, converter=_count)
    daily: int = attrs.field(default=0, converter=_count)
    weekly: int = attrs.field(default=0, converter=_count)
    monthly: int = attrs.field(default=0, converter=_count)
    yearly: int = attrs.field(default=0, converter=_count)

    @property
    def empty(self) -> bool:
        return not any(attrs.astuple(self))

    def format(self) -> str:
        """``"last=3 daily=7"``: the rules that are set, as stored on a repository."""
        return " ".join(f"{k}={v}" for k, v in attrs.asdict(self).items() if v)

    @classmethod
    def parse(cls, text: str) -> RetentionPolicy:
        """Read ``format``'s output (e.g. from a pool, so every field is checked)."""
        if not isinstance(text, str) or len(text) > MAX_POLICY_TEXT:
            raise InvalidArgumentError(f"a retention policy is at most {MAX_POLICY_TEXT} characters of text")
        fields: dict[str, int] = {}
        known = {f.name for f in attrs.fields(cls)}
        for word in text.split():
            key, sep, value = word.partition("=")
            if not sep or key not in known or key in fields or not value.isdigit() or not value.isascii():
                raise InvalidArgumentError(
                    f"retention policy {text!r}: {word!r} is not one of {', '.join(sorted(known))}=N (each once)"
                )
            fields[key] = int(value)
        return cls(**fields)

    def as_dict(self) -> dict[str, int]:
        return attrs.asdict(self)


@attrs.frozen
class Candidate:
    """A commit as the planner sees it: its snapshot name and when it was committed."""

    snapshot: str
    committed: str  # ISO 8601 from dsg-storage:committed; may be empty or garbage


@attrs.frozen
class Decision:
    snapshot: str
    committed: str
    keep: bool
    reasons: tuple[str, ...]  # why it is kept ("last 1/3", "daily 2026-11-21", "hold"...); empty if destroyed


@attrs.frozen
class Plan:
    """What ``plan`` decided, oldest commit first."""

    policy: RetentionPolicy
    decisions: tuple[Decision, ...]

    @property
    def keep(self) -> list[Decision]:
        return [d for d in self.decisions if d.keep]

    @property
    def destroy(self) -> list[str]:
        return [d.snapshot for d in self.decisions if not d.keep]


def parse_time(value: str) -> datetime | None:
    """A commit time in UTC, or None if it cannot be read (a naive time is taken as UTC)."""
    if not isinstance(value, str) or not value or len(value) > 64:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _label(kind: str, key: tuple[int, ...]) -> str:
    if kind == "weekly":
        return f"weekly {key[0]}-W{key[1]:02d}"
    if kind == "hourly":
        return f"hourly {key[0]}-{key[1]:02d}-{key[2]:02d}T{key[3]:02d}"
    return f"{kind} " + "-".join(f"{part:02d}" for part in key)


def _newest_per_period(
    kind: str, budget: int, timed: Sequence[tuple[datetime, int, Candidate]]
) -> list[tuple[Candidate, str]]:
    """The newest commit of each of the newest ``budget`` periods of ``kind`` that hold
    one, with its label; ``timed`` is newest first."""
    kept: list[tuple[Candidate, str]] = []
    seen: tuple[int, ...] | None = None
    for when, _, commit in timed:
        if len(kept) == budget:
            break
        key = _period_key(kind, when)
        if key != seen:  # the newest commit of a period not seen yet
            seen = key
            kept.append((commit, _label(kind, key)))
    return kept


def plan(
    commits: Sequence[Candidate],
    policy: RetentionPolicy,
    *,
    protected: Mapping[str, str] | None = None,
) -> Plan:
    """Decide which of ``commits`` (oldest first, as ``history`` lists them) to keep.

    ``protected`` maps snapshot names to why they must stay (a hold, a keep mark, the
    origin of a clone): kept whatever the policy says. The last of ``commits`` (the
    repository's head commit) is always kept. Raises InvalidArgumentError for an empty
    policy: keeping only the latest commit is something to ask for (``last=1``), never a
    default.
    """
    if policy.empty:
        raise InvalidArgumentError(
            "the retention policy keeps nothing: give at least one --keep-* rule (--keep-last 1 keeps only the latest)"
        )
    protected = protected or {}
    reasons: dict[str, list[str]] = {c.snapshot: [] for c in commits}
    if commits:
        reasons[commits[-1].snapshot].append("latest")
    timed: list[tuple[datetime, int, Candidate]] = []
    for index, commit in enumerate(commits):
        when = parse_time(commit.committed)
        if when is None:
            reasons[commit.snapshot].append("commit time unreadable")
        else:
            timed.append((when, index, commit))
    # Newest first; equal times fall back to history order (the later commit is newer).
    timed.sort(key=lambda item: (item[0], item[1]), reverse=True)
    for n, (_, _, commit) in enumerate(timed[: policy.last], start=1):
        reasons[commit.snapshot].append(f"last {n}/{policy.last}")
    for kind in PERIODS:
        for commit, label in _newest_per_period(kind, getattr(policy, kind), timed):
            reasons[commit.snapshot].append(label)
    for name, why in protected.items():
        if name in reasons:
            reasons[name].append(why)
    decisions = tuple(
        Decision(c.snapshot, c.committed, bool(reasons[c.snapshot]), tuple(reasons[c.snapshot])) for c in commits
    )
    return Plan(policy, decisions)
