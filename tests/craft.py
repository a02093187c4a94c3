"""Crafted bundles, every digest right: what an attacker who rewrites a bundle can make.

``write_raw`` lays out the format byte by byte (docs in ``dsg_storage.transfer.layout``)
from raw record payloads, so a test can put anything in a record (16 MiB of nested
lists, a lying part info) and still have every checksum and the structure hash match.
``repository_bundle`` builds a consistent repository bundle (metadata, part info and
each stream's BEGIN record agree) from snapshot names and GUIDs, with ``lie`` hooks.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dsg_storage.transfer import layout, sendstream

_RECORD = struct.Struct(">cQ")


def dumps(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def write_raw(
    path: Path,
    metadata: bytes,
    parts: Sequence[tuple[bytes, bytes]],
    *,
    trailer_parts: Sequence[Mapping[str, Any]] | None = None,
) -> Path:
    """A bundle of raw ``metadata`` JSON and ``parts``: (raw part info JSON, stream bytes).
    The trailer lists each part with its info (or ``trailer_parts`` as given)."""
    structure = hashlib.sha256()
    out = bytearray()

    def put(data: bytes, hashed: bool = True) -> None:
        out.extend(data)
        if hashed:
            structure.update(data)

    def record(rtype: bytes, payload: bytes, hashed: bool = True) -> None:
        head = _RECORD.pack(rtype, len(payload))
        put(head, hashed)
        put(payload, hashed)
        put(hashlib.sha256(head + payload).digest(), hashed)

    put(struct.pack(">8sI", layout.MAGIC, layout.FORMAT_VERSION))
    record(layout.METADATA, metadata)
    listed = []
    for index, (info, stream) in enumerate(parts):
        record(layout.PART_BEGIN, b'{"index":%d,"info":%s}' % (index, info))
        put(_RECORD.pack(layout.STREAM, len(stream)))
        offset = len(out)
        put(stream, hashed=False)
        digests = b"".join(
            hashlib.md5(stream[at : at + layout.CHUNK_SIZE]).digest() for at in range(0, len(stream), layout.CHUNK_SIZE)
        )
        record(layout.CHUNK_DIGESTS, digests)
        digest = hashlib.md5(digests).hexdigest()
        end = {
            "index": index,
            "size": len(stream),
            "chunk_size": layout.CHUNK_SIZE,
            "algorithm": "md5",
            "digest": digest,
        }
        record(layout.PART_END, dumps(end))
        listed.append(
            {"index": index, "info": json.loads(info), "size": len(stream), "digest": digest, "offset": offset}
        )
    trailer_at = len(out)
    entries = list(trailer_parts) if trailer_parts is not None else listed
    trailer = {
        "part_count": len(entries),
        "parts": entries,
        "total_size": sum(int(p.get("size", 0)) for p in entries),
        "structure_sha256": structure.hexdigest(),
    }
    record(layout.TRAILER, dumps(trailer), hashed=False)
    out.extend(struct.pack(">Q8s", trailer_at, layout.END_MAGIC))
    path.write_bytes(bytes(out))
    return path


def snapshot_meta(name: str, guid: int) -> dict[str, Any]:
    return {"name": name, "guid": str(guid), "createtxg": 10, "creation": 1764600000, "user_props": {}}


def metadata(
    repository: str, snapshots: Sequence[tuple[str, int]], base: tuple[str, int] | None = None, **override: Any
) -> dict[str, Any]:
    meta = {
        "kind": "dsg-storage bundle",
        "type": "incremental" if base else "full",
        "repository": repository,
        "base": {"name": base[0], "guid": str(base[1])} if base else None,
        "snapshots": [snapshot_meta(n, g) for n, g in snapshots],
        "owner": "1234:5678",
        "mode": "0750",
        "created": "2026-12-01T19:00:00+00:00",
        "zfs_version": "2.3.9-1",
        "dsg_storage_version": "0.1.0",
    }
    meta.update(override)
    return meta


def part_infos(snapshots: Sequence[tuple[str, int]], base: tuple[str, int] | None = None) -> list[dict[str, Any]]:
    infos, previous = [], base
    for name, guid in snapshots:
        infos.append(
            {
                "snapshot": name,
                "guid": str(guid),
                "from": previous[0] if previous else None,
                "from_guid": str(previous[1]) if previous else None,
            }
        )
        previous = (name, guid)
    return infos


def fake_stream(toname: str, toguid: int, fromguid: int = 0, size: int = 4096, **kwargs: Any) -> bytes:
    """A BEGIN record and filler: enough for every check but ZFS's own receive."""
    begin = sendstream.make_begin(toname, toguid, fromguid, **kwargs)
    return begin + bytes(range(256)) * ((size - len(begin)) // 256 + 1)


def repository_bundle(
    path: Path,
    repository: str = "tank/data/src",
    snapshots: Sequence[tuple[str, int]] = (("s1", 101), ("s2", 102)),
    base: tuple[str, int] | None = None,
    *,
    streams: Sequence[bytes] | None = None,
    meta: Mapping[str, Any] | None = None,
    infos: Sequence[Mapping[str, Any]] | None = None,
) -> Path:
    """A consistent repository bundle; pass ``streams``, ``meta`` or ``infos`` to lie."""
    if streams is None:
        chain = [base[1] if base else 0, *(g for _, g in snapshots)]
        streams = [fake_stream(f"{repository}@{n}", g, chain[i]) for i, (n, g) in enumerate(snapshots)]
    meta = metadata(repository, snapshots, base) if meta is None else meta
    infos = part_infos(snapshots, base) if infos is None else infos
    return write_raw(path, dumps(meta), [(dumps(i), s) for i, s in zip(infos, streams, strict=True)])


def records(raw: bytes) -> list[tuple[bytes, int, int]]:
    """(type, offset, length) of every record and stream header of a bundle's bytes,
    read without the module's help (the format's layout)."""
    found, offset = [], 12
    while offset < len(raw) - 16:
        rtype, length = struct.unpack(">cQ", raw[offset : offset + 9])
        found.append((rtype, offset, length))
        offset += 9 + length + (0 if rtype == b"S" else 32)
    return found
