"""What a repository bundle says about itself, typed and checked where it enters.

A bundle comes from somebody else: its metadata (JSON, in the bundle's first record) and
each part's info are checked here once, against a schema, and everything after uses the
typed values; no code reads the raw JSON. A bad field is a ``BundleError`` naming the
field and what is wrong with it (exit 9 on the command line), never a ``KeyError``.

Metadata, as ``export_bundle`` writes it::

    {"kind": "dsg-storage bundle", "type": "full" | "incremental",
     "repository": "tank/data/survey",
     "base": null | {"name": SNAP, "guid": "GUID"},
     "snapshots": [{"name": SNAP, "guid": "GUID", "createtxg": INT, "creation": INT,
                    "user_props": {"dsg-storage:...": STR}}],
     "owner": "UID:GID" | null, "mode": "0750" | null,      (shown, never applied)
     "created": ISO 8601, "zfs_version": STR, "dsg_storage_version": STR}

Part ``i``'s info is ``{"snapshot", "guid", "from", "from_guid"}``: snapshot ``i`` and the
one its stream is incremental from (the base, the previous snapshot, or null for the
full stream of a full bundle's first part). GUIDs are decimal strings (u64).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from .. import names as _names
from ..errors import BundleError, InvalidNameError

KIND = "dsg-storage bundle"
MAX_SNAPSHOTS = 100_000
MAX_USER_PROPS = 64
MAX_PROP_VALUE = 8192  # ZFS's own limit for a user property's value
MAX_TEXT = 256


@attrs.frozen
class SnapshotRecord:
    name: str  # short name, after '@'
    guid: int
    createtxg: int
    creation: int  # seconds since the epoch
    user_props: Mapping[str, str]


@attrs.frozen
class BaseRecord:
    name: str
    guid: int


@attrs.frozen
class PartInfo:
    snapshot: str
    guid: int
    from_name: str | None
    from_guid: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "snapshot": self.snapshot,
            "guid": str(self.guid),
            "from": self.from_name,
            "from_guid": None if self.from_guid is None else str(self.from_guid),
        }


@attrs.frozen
class BundleMetadata:
    type: str  # full | incremental
    repository: str
    base: BaseRecord | None
    snapshots: tuple[SnapshotRecord, ...]
    owner: str | None
    mode: str | None
    created: str
    zfs_version: str
    dsg_storage_version: str

    def parts(self) -> list[PartInfo]:
        """The part info each stream must carry, in order, as this metadata implies it."""
        previous: tuple[str, int] | None = (self.base.name, self.base.guid) if self.base else None
        out = []
        for snap in self.snapshots:
            out.append(PartInfo(snap.name, snap.guid, *(previous or (None, None))))
            previous = (snap.name, snap.guid)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "type": self.type,
            "repository": self.repository,
            "base": {"name": self.base.name, "guid": str(self.base.guid)} if self.base else None,
            "snapshots": [
                {
                    "name": s.name,
                    "guid": str(s.guid),
                    "createtxg": s.createtxg,
                    "creation": s.creation,
                    "user_props": dict(s.user_props),
                }
                for s in self.snapshots
            ],
            "owner": self.owner,
            "mode": self.mode,
            "created": self.created,
            "zfs_version": self.zfs_version,
            "dsg_storage_version": self.dsg_storage_version,
        }


class _Fields:
    """Reads typed fields of one JSON object, naming the field in every error."""

    def __init__(self, source: str, where: str, obj: object) -> None:
        self.source, self.where = source, where
        if not isinstance(obj, dict):
            raise self.error(f"{where or 'the metadata'} is not a JSON object")
        self.obj: dict[str, Any] = obj

    def error(self, detail: str) -> BundleError:
        return BundleError(f"{self.source}: bad metadata: {detail}")

    def name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str) -> Any:
        if key not in self.obj:
            raise self.error(f"field {self.name(key)!r} is missing")
        return self.obj[key]

    def text(self, key: str, *, optional: bool = False, max_len: int = MAX_TEXT) -> Any:
        value = self.get(key)
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value:
            raise self.error(f"field {self.name(key)!r} must be a non-empty string, not {_shown(value)}")
        return _plain(value, self.name(key), max_len, self.error)

    def integer(self, key: str) -> int:
        value = self.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**64:
            raise self.error(f"field {self.name(key)!r} must be an integer from 0 to 2**64-1, not {_shown(value)}")
        return value

    def guid(self, key: str, *, optional: bool = False) -> Any:
        value = self.get(key)
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value.isascii() or not value.isdigit() or len(value) > 20:
            raise self.error(f"field {self.name(key)!r} must be a GUID as a decimal string, not {_shown(value)}")
        guid = int(value)
        if not 0 < guid < 2**64:
            raise self.error(f"field {self.name(key)!r} is no GUID (1 to 2**64-1): {value}")
        return guid

    def snapshot_name(self, key: str, *, optional: bool = False) -> Any:
        value = self.text(key, optional=optional)
        if value is not None and (not _names.is_snapshot_short(value) or len(value) > _names.MAX_NAME_LEN):
            raise self.error(f"field {self.name(key)!r} is not a snapshot name: {value!r}")
        return value


def _shown(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def _plain(value: str, field: str, max_len: int, error: Any) -> str:
    """Text shown to a user or stored in a property: bounded, and no control characters
    (a terminal escape sequence in a bundle must not reach the importer's terminal)."""
    if len(value) > max_len:
        raise error(f"field {field!r} is {len(value)} characters long, more than {max_len}")
    if any(ord(c) < 0x20 and c not in "\t\n" or 0x7F <= ord(c) < 0xA0 for c in value):
        raise error(f"field {field!r} holds control characters")
    return value


def parse(raw: object, source: str) -> BundleMetadata:
    """Check a bundle's metadata against the schema; ``source`` names the file in errors."""
    top = _Fields(source, "", raw)
    kind = top.get("kind")
    if kind != KIND:
        raise BundleError(f"{source} is a bundle file but not a repository bundle (kind {_shown(kind)})")
    bundle_type = top.text("type")
    if bundle_type not in ("full", "incremental"):
        raise top.error(f"field 'type' must be 'full' or 'incremental', not {bundle_type!r}")
    repository = top.text("repository")
    try:
        _names.validate_repository(repository)
    except InvalidNameError as exc:
        raise top.error(f"field 'repository' is not a repository name: {exc}") from None
    base_raw = top.get("base")
    base = None
    if base_raw is not None:
        fields = _Fields(source, "base", base_raw)
        base = BaseRecord(fields.snapshot_name("name"), fields.guid("guid"))
    if (base is None) != (bundle_type == "full"):
        raise top.error(f"a {bundle_type} bundle {'has no' if base is None else 'has a'} 'base'")
    entries = top.get("snapshots")
    if not isinstance(entries, list) or not entries:
        raise top.error(f"field 'snapshots' must be a non-empty list, not {_shown(entries)}")
    if len(entries) > MAX_SNAPSHOTS:
        raise top.error(f"it lists {len(entries)} snapshots, more than {MAX_SNAPSHOTS}")
    snapshots = tuple(_snapshot(source, f"snapshots[{i}]", entry) for i, entry in enumerate(entries))
    seen_names = [s.name for s in snapshots] + ([base.name] if base else [])
    seen_guids = [s.guid for s in snapshots] + ([base.guid] if base else [])
    if len(set(seen_names)) != len(seen_names) or len(set(seen_guids)) != len(seen_guids):
        raise top.error("a snapshot name or GUID appears twice (base included)")
    return BundleMetadata(
        type=bundle_type,
        repository=repository,
        base=base,
        snapshots=snapshots,
        owner=top.text("owner", optional=True, max_len=64),
        mode=top.text("mode", optional=True, max_len=8),
        created=top.text("created", max_len=64),
        zfs_version=top.text("zfs_version", max_len=64),
        dsg_storage_version=top.text("dsg_storage_version", max_len=64),
    )


def _snapshot(source: str, where: str, raw: object) -> SnapshotRecord:
    fields = _Fields(source, where, raw)
    props = fields.get("user_props")
    if not isinstance(props, dict):
        raise fields.error(f"field '{where}.user_props' must be an object, not {_shown(props)}")
    if len(props) > MAX_USER_PROPS:
        raise fields.error(f"field '{where}.user_props' has {len(props)} properties, more than {MAX_USER_PROPS}")
    for key, value in props.items():
        # Only our own properties: the import sets them on the snapshots it receives.
        if not key.startswith(_names.PROP_PREFIX) or not _names.is_snapshot_short(key) or len(key) > MAX_TEXT:
            raise fields.error(f"'{where}.user_props' holds {key[:60]!r}, which is not a dsg-storage property")
        if not isinstance(value, str):
            raise fields.error(f"property {key!r} of '{where}' must be a string, not {_shown(value)}")
        if len(value) > MAX_PROP_VALUE or "\0" in value:  # stored, never shown: any text ZFS can hold
            raise fields.error(f"property {key!r} of '{where}' is longer than {MAX_PROP_VALUE} or holds a NUL")
    return SnapshotRecord(
        fields.snapshot_name("name"),
        fields.guid("guid"),
        fields.integer("createtxg"),
        fields.integer("creation"),
        dict(props),
    )


def check_parts(meta: BundleMetadata, infos: list[Mapping[str, Any]], source: str) -> None:
    """Each part's info is the one the metadata implies (same snapshot, same GUIDs, each
    incremental from the one before)."""
    if len(infos) != len(meta.snapshots):
        raise BundleError(f"{source}: {len(infos)} streams for {len(meta.snapshots)} snapshots")
    for index, (info, expected) in enumerate(zip(infos, meta.parts(), strict=True)):
        if dict(info) != expected.to_json():
            raise BundleError(
                f"{source}: part {index + 1}'s info does not match the metadata "
                f"(expected the stream of {expected.snapshot} from {expected.from_name or 'nothing (full)'})"
            )
