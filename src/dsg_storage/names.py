"""Every name dsg-storage reads or writes, built and parsed in this one place.

Naming scheme (``REPO`` is the repository's dataset, e.g. ``tank/data/survey``; ``TX`` is a
transaction id such as ``20261121T071530Z-3fa2c1``, sortable by the time it began):

========================================  ===============================================
``REPO.dsg-init-TX``                      init: the dataset the caller fills (sibling)
``REPO@dsg-base-TX``                      sync: the snapshot the workspace starts from
``REPO.dsg-ws-TX``                        sync: the workspace clone (sibling)
``REPO.dsg-old-TX``                       sync commit: the previous head, until destroyed
``REPO@dsg-commit-YYYYmmddTHHMMSS.fffZ``   a commit; sorts by commit time
========================================  ===============================================

Temporary datasets are siblings of the repository (the same parent), so renames stay
within one parent and the allow-list prefix that covers the repository's parent covers
them too. User properties live under the ``dsg-storage:`` namespace.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime

from .errors import InvalidNameError

#: ZFS_MAX_DATASET_NAME_LEN is 256 including the terminating NUL.
MAX_NAME_LEN = 255
PROP_PREFIX = "dsg-storage:"
_TX_RE = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}")
_COMPONENT_RE = re.compile(r"[A-Za-z0-9_.:\- ]+")
_RESERVED_MARK = ".dsg-"
_POOL_RESERVED = re.compile(r"(mirror|raidz|draid|spare|log|c[0-9].*)", re.DOTALL)
# The longest suffix we add to a repository name (init/workspace/old datasets, snapshots).
_LONGEST_SUFFIX = len(".dsg-init-") + len("20261121T071530Z-3fa2c1") + 2


def prop(name: str) -> str:
    """The full name of one of our user properties."""
    return PROP_PREFIX + name


# Our user properties. On a transaction's temporary dataset (and, once it is the
# repository, on the repository): what the transaction is and where it stands.
P_TX, P_PATTERN, P_REPO = prop("tx"), prop("pattern"), prop("repository")
P_MOUNTPOINT, P_OWNER, P_MODE = prop("mountpoint"), prop("owner"), prop("mode")
P_PATH, P_BEGUN, P_INHERITS = prop("path"), prop("begun"), prop("inherits-mountpoint")
P_STATE = prop("state")
P_COMMIT_MESSAGE = prop("commit-message")  # on the workspace until the commit snapshot has it
# On the repository: a sync begin's base (until its clone exists), the commit snapshot
# a finishing commit takes, and an incremental bundle import in progress ("TX BASE").
P_PENDING, P_COMMIT_SNAPSHOT, P_IMPORT = prop("pending"), prop("commit-snapshot"), prop("import")
#: On the repository: the transactions whose base snapshot could not be destroyed yet (a
#: tool holds it), space-separated, so that recovery on any host retries them.
P_LEFT_BASES = prop("left-bases")
#: Not ours: the property zfs-auto-snapshot (and tools that follow it) skip a dataset by.
#: Our temporaries carry ``false``; the repository gets back its own value at commit.
P_AUTO_SNAPSHOT = "com.sun:auto-snapshot"
# On the repository: why recovery last rolled back a commit it could not complete.
P_RECOVERY_NOTE = prop("recovery-note")
# Retention: the policy stored on a repository, and the mark on a commit to keep.
P_RETENTION, P_KEEP = prop("retention"), prop("keep")
# On a commit snapshot: when and by which transaction, with its message; on a snapshot
# taken by request, when it was asked for.
P_COMMITTED, P_MESSAGE, P_REQUESTED = prop("committed"), prop("message"), prop("requested")
# On a snapshot the queue took (which queued request it was); on a workspace the HRDAG/dsg
# drop-in opened (dsg's own transaction id).
P_QUEUE_ID, P_DSG_TRANSACTION = prop("queue-id"), prop("dsg-transaction")
#: Native properties that make a file system's contents harmless (nosuid, nodev, noexec
#: mounts): where set on a repository itself (by hand, or by a bundle import) its
#: workspace is cloned with the same values, since a clone takes its properties from its
#: parent, not from its origin, and the workspace becomes the repository at commit.
CARRIED_FLAGS = ("setuid", "devices", "exec")
#: Every user property of ours this version sets, on datasets and snapshots: what the
#: read-only commands ask ``zfs get`` for by name (``zfs.listing``), since asking for
#: ``all`` makes ZFS compute every native property of every snapshot.
OUR_PROPS = (
    P_TX, P_PATTERN, P_REPO, P_MOUNTPOINT, P_OWNER, P_MODE, P_PATH, P_BEGUN, P_INHERITS, P_STATE,
    P_COMMIT_MESSAGE, P_PENDING, P_COMMIT_SNAPSHOT, P_IMPORT, P_LEFT_BASES, P_RECOVERY_NOTE,
    P_RETENTION, P_KEEP, P_COMMITTED, P_MESSAGE, P_REQUESTED, P_QUEUE_ID, P_DSG_TRANSACTION,
)  # fmt: skip
#: Those of them a caller may set through ``Repository.begin(properties=...)``: the
#: HRDAG/dsg drop-in's transaction id, recorded with the workspace as it is created.
CALLER_PROPS = (P_DSG_TRANSACTION,)
#: Those of them set on snapshots: all a snapshot list asks for (each one asked costs a
#: lookup per snapshot).
SNAPSHOT_PROPS = (P_TX, P_COMMITTED, P_MESSAGE, P_REQUESTED, P_KEEP, P_QUEUE_ID)


def new_tx_id(now: datetime | None = None) -> str:
    moment = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    # os.urandom is what secrets.token_hex uses, without importing hashlib, hmac and random.
    return f"{moment}-{os.urandom(3).hex()}"


def is_tx_id(text: str) -> bool:
    """Whether ``text`` is a transaction id as ``new_tx_id`` makes them."""
    return _TX_RE.fullmatch(text) is not None


def validate_tx_id(tx: str) -> str:
    if not isinstance(tx, str) or not _TX_RE.fullmatch(tx):
        raise InvalidNameError(f"{tx!r} is not a transaction id (expected e.g. 20261121T071530Z-3fa2c1)")
    return tx


def validate_repository(name: str) -> str:
    """Return ``name`` if it can name a repository dataset; raise InvalidNameError otherwise.

    Checked before any ZFS call: empty names, ``@``/``#``, ``..``, empty components
    (``//``, leading or trailing ``/``), characters ZFS refuses, a pool root, names too long
    for ZFS once our temporary suffixes are added, and our own reserved ``.dsg-`` marker.
    """
    if not isinstance(name, str) or not name:
        raise InvalidNameError("the repository name is empty")
    if "@" in name or "#" in name:
        raise InvalidNameError(f"repository {name!r} contains '@' or '#': name a filesystem, not a snapshot")
    if ".." in name:
        raise InvalidNameError(f"repository {name!r} contains '..'")
    components = name.split("/")
    if any(c == "" for c in components):
        raise InvalidNameError(f"repository {name!r} has an empty component ('//', or a leading/trailing '/')")
    bad = [c for c in components if not _COMPONENT_RE.fullmatch(c) or c == "."]
    if bad:
        raise InvalidNameError(
            f"repository {name!r}: component {bad[0]!r} has characters ZFS refuses "
            "(allowed: letters, digits, '_', '-', '.', ':', space)"
        )
    pool = components[0]
    if not _pool_name_allowed(pool):
        raise InvalidNameError(f"repository {name!r}: {pool!r} is not a valid pool name")
    if len(components) == 1:
        raise InvalidNameError(f"repository {name!r} is a pool's root dataset; use a dataset below it")
    if _RESERVED_MARK in name:
        raise InvalidNameError(
            f"repository {name!r} contains {_RESERVED_MARK!r}, reserved for dsg-storage's own datasets"
        )
    if len(name) + _LONGEST_SUFFIX > MAX_NAME_LEN:
        raise InvalidNameError(
            f"repository {name!r} is {len(name)} characters; with dsg-storage's temporary suffixes it would "
            f"exceed ZFS's limit of {MAX_NAME_LEN} (at most {MAX_NAME_LEN - _LONGEST_SUFFIX} characters)"
        )
    return name


def validate_pool(name: str) -> str:
    """Return ``name`` if it can name a pool; raise InvalidNameError otherwise."""
    if not isinstance(name, str) or not _COMPONENT_RE.fullmatch(name) or " " in name:
        raise InvalidNameError(f"{name!r} is not a pool name (letters, digits, '_', '-', '.', ':')")
    if not _pool_name_allowed(name):
        raise InvalidNameError(f"{name!r} is not a valid pool name")
    return name


def _pool_name_allowed(pool: str) -> bool:
    """ZFS's rule beyond the characters: a letter first, and no vdev keyword."""
    return pool[0].isalpha() and not _POOL_RESERVED.fullmatch(pool)


def pool_of(dataset: str) -> str:
    return dataset.split("/", 1)[0].split("@", 1)[0]


def init_dataset(repo: str, tx: str) -> str:
    return f"{repo}.dsg-init-{tx}"


def workspace_dataset(repo: str, tx: str) -> str:
    return f"{repo}.dsg-ws-{tx}"


def old_dataset(repo: str, tx: str) -> str:
    return f"{repo}.dsg-old-{tx}"


def gone_dataset(repo: str, tx: str) -> str:
    """An undone transaction's temporary dataset, kept only while another tool holds (or
    bookmarked) a snapshot it took of it; recovery destroys it once it can."""
    return f"{repo}.dsg-gone-{tx}"


def base_places(repo: str, tx: str) -> tuple[str, ...]:
    """Where transaction ``tx``'s base snapshot may be: on the repository (before the
    workspace's promote, and after a commit), on the workspace (promoted, the commit not
    finished), on the old head (a reader's hold refused the promote)."""
    short = f"dsg-base-{tx}"
    return tuple(f"{dataset}@{short}" for dataset in (repo, workspace_dataset(repo, tx), old_dataset(repo, tx)))


def receive_dataset(repo: str, tx: str) -> str:
    """Where a full bundle is received before it takes the repository's name."""
    return f"{repo}.dsg-recv-{tx}"


def base_snapshot(repo: str, tx: str) -> str:
    return f"{repo}@dsg-base-{tx}"


def commit_snapshot(repo: str, when: datetime) -> str:
    return f"{repo}@dsg-commit-{when.strftime('%Y%m%dT%H%M%S')}.{when.microsecond // 1000:03d}Z"


def is_commit_snapshot(short_name: str) -> bool:
    """``short_name`` is the part after '@'."""
    return short_name.startswith("dsg-commit-")


_TEMP_RE = re.compile(r"(?P<repo>.+)\.dsg-(?P<kind>init|ws|old|recv|gone)-(?P<tx>[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6})")


def parse_temporary(dataset: str) -> tuple[str, str, str] | None:
    """``(repo, kind, tx)`` for one of our temporary datasets, else None."""
    match = _TEMP_RE.fullmatch(dataset)
    return (match["repo"], match["kind"], match["tx"]) if match else None


def workspace_mount_path(mountpoint: str, tx: str) -> str:
    """Where the caller works during a transaction: beside the repository's mount path."""
    return f"{mountpoint.rstrip('/')}.dsg-tx-{tx}"


_SNAPSHOT_SHORT_RE = re.compile(r"[A-Za-z0-9_.:\-]+")


def is_snapshot_short(short: str) -> bool:
    """Characters ZFS accepts in a snapshot's name after '@' (any snapshot, ours too)."""
    return bool(_SNAPSHOT_SHORT_RE.fullmatch(short))


def valid_snapshot_short(short: str) -> bool:
    """A snapshot's name after '@': characters ZFS accepts, not ours to reserve."""
    return bool(_SNAPSHOT_SHORT_RE.fullmatch(short)) and not short.startswith(("dsg-base-", "dsg-commit-"))
