"""A pool's datasets and snapshots as the userland helper listed them, read once per
session (the pool is read-only: nothing changes under us), in the shape the live reader
sees: ``filesystems`` with our user properties, ``mountpoint`` and ``origin``, and
``snapshots`` with GUIDs, creation txgs and times. Pure logic over checked records."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ... import names as _names
from ...zfs.port import Snapshot
from .protocol import HelperProtocolError

DMU_OST_ZFS = 2
#: How a received property's source reads in ``dsl_prop_get_all`` (ZPROP_SOURCE_VAL_RECVD).
RECEIVED = "$recvd"


def _value(props: Mapping[str, Any], name: str) -> Any:
    entry = props.get(name)
    return entry.get("value") if isinstance(entry, dict) else None


def _int(props: Mapping[str, Any], name: str, dataset: str) -> int:
    value = _value(props, name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise HelperProtocolError(f"{dataset} has no valid {name} in what the helper read")
    return value


def own_user_props(name: str, props: Mapping[str, Any], prefix: str = _names.PROP_PREFIX) -> dict[str, str]:
    """User properties under ``prefix`` set on ``name`` itself, locally or by a receive
    (never inherited), as strings."""
    out = {}
    for key, entry in props.items():
        if not key.startswith(prefix) or not isinstance(entry, dict):
            continue
        value, source = entry.get("value"), entry.get("source")
        if isinstance(value, str) and source in (name, RECEIVED):
            out[key] = value
    return out


def mountpoint(name: str, props: Mapping[str, Any]) -> str:
    """The ``mountpoint`` as ``zfs get`` shows it: the value set on ``name``, or the one
    inherited with the rest of the name appended, or the default ``/NAME``."""
    entry = props.get("mountpoint")
    if not isinstance(entry, dict) or not isinstance(entry.get("value"), str):
        return "/" + name
    value, source = str(entry["value"]), entry.get("source")
    if value in ("none", "legacy") or source in (name, RECEIVED) or not isinstance(source, str):
        return value
    if not name.startswith(source + "/"):
        return value
    rest = name[len(source) + 1 :]
    return value.rstrip("/") + "/" + rest if value != "/" else "/" + rest


class PoolCatalog:
    """Satisfies ``zfs.port.Catalog`` for the userland reader."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records = {str(r["name"]): r for r in records}

    def exists(self, name: str) -> bool:
        return name in self.records

    def filesystems(self, under: str) -> dict[str, dict[str, str]]:
        found = {}
        for name, record in sorted(self.records.items()):
            if "@" in name or record["objset_type"] != DMU_OST_ZFS:
                continue
            if name != under and not name.startswith(under + "/"):
                continue
            props = record["props"]
            fields = {**own_user_props(name, props), "mountpoint": mountpoint(name, props)}
            origin = _value(props, "origin")
            if isinstance(origin, str) and origin:
                fields["origin"] = origin
            found[name] = fields
        return found

    def origin_and_snapshots(self, dataset: str, *, guarded: bool = False) -> tuple[str, list[Snapshot]]:
        """``guarded`` is not read here (``holds`` and ``clones`` stay None): holds live in
        a ZAP this reader does not walk, and nothing pruned reads a pool this way."""
        return (self.filesystems(dataset).get(dataset) or {}).get("origin", ""), self.snapshots(dataset)

    def snapshots(self, dataset: str) -> list[Snapshot]:
        snaps = [
            Snapshot(
                name=name,
                guid=_int(record["props"], "guid", name),
                createtxg=_int(record["props"], "createtxg", name),
                creation=_int(record["props"], "creation", name),
                user_props=own_user_props(name, record["props"]),
            )
            for name, record in self.records.items()
            if name.split("@", 1)[0] == dataset and "@" in name
        ]
        return sorted(snaps, key=lambda s: s.createtxg)
