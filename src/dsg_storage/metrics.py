"""Prometheus metrics of unattended work: the queue, open transactions, latest commits.

``gather`` reads what to report (decided apart from the format); ``registry`` turns it
into a ``prometheus_client`` registry, which ``render`` prints in the text exposition
format and ``write_textfile`` writes for node_exporter's textfile collector
(``DIR/dsg_storage.prom``, written to a temporary file and renamed, so the collector
never reads half a file; ``write_output`` does it through a given ``hostfs.OutputFile``,
such as one written as the user who ran sudo).

Repositories reported: every dataset dsg-storage initialized at or below each
``under`` dataset (default: the allow-list's prefixes). A prefix whose pool cannot be
read is reported as ``dsg_storage_up{under=...} 0``, not as an error: metrics are
watched most when something is wrong.

``prometheus_client`` is an optional dependency (``pip install 'dsg-storage[metrics]'``,
or the OS package ``python3-prometheus-client``); without it these functions raise
MetricsUnavailableError saying so.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs

from . import hostfs
from . import names as _names
from .core.repository import Repository
from .core.retention import parse_time
from .errors import DsgStorageError, InvalidArgumentError, MetricsUnavailableError
from .names import P_OWNER
from .queue import ItemState, Queue
from .zfs.port import ZfsPort

TEXTFILE = "dsg_storage.prom"


def _client() -> ModuleType:
    try:
        import prometheus_client
    except ImportError as exc:
        raise MetricsUnavailableError(
            f"metrics need the prometheus_client package ({exc})",
            hint="pip install 'dsg-storage[metrics]', or apt-get install python3-prometheus-client",
        ) from exc
    return prometheus_client


@attrs.frozen
class OpenTransaction:
    repository: str
    tx: str
    state: str
    age: float | None  # seconds since begin; None if the begin time is unreadable


@attrs.frozen
class RepositoryFacts:
    name: str
    commits: int
    last_commit_time: float | None  # seconds since the epoch


@attrs.frozen
class Facts:
    queue_counts: dict[str, int]
    queue_max_pending: int
    oldest_pending_age: float | None
    readable: dict[str, bool]  # under -> could it be read
    repositories: tuple[RepositoryFacts, ...]
    transactions: tuple[OpenTransaction, ...]


def gather(
    queue: Queue,
    zfs: ZfsPort,
    under: Sequence[str],
    *,
    now: float | None = None,
    only: Callable[[str], bool] | None = None,
) -> Facts:
    """Read the queue's state and, for each ``under`` dataset, its repositories. With
    ``only``, queue items count only if it accepts their target (``Queue.stats``)."""
    now = time.time() if now is None else now
    stats = queue.stats(only=only)
    readable: dict[str, bool] = {}
    repos: dict[str, RepositoryFacts] = {}
    transactions: list[OpenTransaction] = []
    for prefix in under:
        try:
            found = zfs.filesystems(prefix)
            for name, props in sorted(found.items()):
                if P_OWNER not in props or _names.parse_temporary(name) or name in repos:
                    continue
                repo = Repository(name, zfs=zfs)
                history = repo.history()
                last = parse_time(history[-1].committed) if history else None
                repos[name] = RepositoryFacts(name, len(history), last.timestamp() if last else None)
                for pending in repo.pending():
                    begun = parse_time(pending.begun or "")
                    age = max(0.0, now - begun.timestamp()) if begun else None
                    transactions.append(OpenTransaction(name, pending.tx, pending.state, age))
        except DsgStorageError:
            readable[prefix] = False
            continue
        readable[prefix] = bool(found)
    return Facts(
        queue_counts=dict(stats["counts"]),
        queue_max_pending=int(stats["max_pending"]),
        oldest_pending_age=stats["oldest_pending_age"],
        readable=readable,
        repositories=tuple(repos.values()),
        transactions=tuple(transactions),
    )


def registry(facts: Facts) -> Any:
    """A ``prometheus_client.CollectorRegistry`` holding ``facts``."""
    client = _client()
    reg = client.CollectorRegistry()

    def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Any:
        return client.Gauge(name, doc, list(labels), registry=reg)

    items = gauge("dsg_storage_queue_items", "Queue items by state.", ["state"])
    for state in ItemState:
        items.labels(state=state.value).set(facts.queue_counts.get(state.value, 0))
    gauge("dsg_storage_queue_max_pending", "Most pending items the queue accepts.").set(facts.queue_max_pending)
    gauge(
        "dsg_storage_queue_oldest_pending_age_seconds", "Age of the oldest pending queue item (0: none pending)."
    ).set(facts.oldest_pending_age or 0.0)
    up = gauge("dsg_storage_up", "1 if the repositories under this dataset could be read.", ["under"])
    for prefix, ok in facts.readable.items():
        up.labels(under=prefix).set(1 if ok else 0)
    commits = gauge("dsg_storage_commits", "Number of commits of the repository.", ["repository"])
    last = gauge(
        "dsg_storage_last_commit_timestamp_seconds", "When the latest commit was made (Unix time).", ["repository"]
    )
    open_tx = gauge("dsg_storage_open_transactions", "Unfinished transactions on the repository.", ["repository"])
    for repo in facts.repositories:
        commits.labels(repository=repo.name).set(repo.commits)
        if repo.last_commit_time is not None:
            last.labels(repository=repo.name).set(repo.last_commit_time)
        open_tx.labels(repository=repo.name).set(sum(1 for t in facts.transactions if t.repository == repo.name))
    age = gauge(
        "dsg_storage_transaction_age_seconds",
        "Seconds since an unfinished transaction began.",
        ["repository", "tx", "state"],
    )
    for tx in facts.transactions:
        if tx.age is not None:
            age.labels(repository=tx.repository, tx=tx.tx, state=tx.state).set(tx.age)
    return reg


def render(facts: Facts) -> str:
    """The Prometheus text exposition of ``facts``."""
    text: bytes = _client().generate_latest(registry(facts))
    return text.decode()


def textfile_path(directory: str | os.PathLike[str]) -> str:
    """``DIR/dsg_storage.prom``, absolute: the file node_exporter's collector reads."""
    return os.path.join(os.path.abspath(os.fspath(directory)), TEXTFILE)


def write_output(facts: Facts, out: hostfs.OutputFile) -> str:
    """Write the exposition of ``facts`` through ``out`` (for ``textfile_path(DIR)``; through
    sudo the invoking user's, ``Invocation.output``) and return its path. After a crash
    the file is the old one or the new one, never half of one (node_exporter skips the
    ``.dsg_storage.prom.partial-*`` file that may be left beside it)."""
    data = memoryview(render(facts).encode())
    with out:
        while data:
            written = os.write(out.fd, data)
            data = data[written:]
    return out.path


def write_textfile(facts: Facts, directory: str | os.PathLike[str]) -> str:
    """Write ``DIR/dsg_storage.prom`` atomically (``write_output``); return its path."""
    if not Path(directory).is_dir():
        raise InvalidArgumentError(f"{directory} is not a directory", hint="create node_exporter's textfile directory")
    path = str(Path(directory) / TEXTFILE)  # as given: the path printed is the one asked for
    write_output(facts, hostfs.OutputFile(path))
    return path
