"""The records of a ZFS send stream, for tests that damage a stream in a precise place.

Each record is a 312-byte header (``dmu_replay_record_t``, include/sys/zfs_ioctl.h in
OpenZFS: ``u32 drr_type, u32 drr_payloadlen``, a 304-byte union) and a payload whose
size depends on the type. Every header but BEGIN's ends in a 32-byte fletcher4 of the
stream so far (``drr_checksum``, at byte 280), which ``zfs receive`` compares unless it
is all zeros; the END record also holds the checksum of everything before it, compared
always. Little-endian streams only (the VM's); the types a plain ``lzc_send`` writes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import attrs

HEADER = 312
CHECKSUM_AT = 280  # the record checksum: the header's last 32 bytes
BEGIN, OBJECT, FREEOBJECTS, WRITE, FREE, END, SPILL, WRITE_EMBEDDED, OBJECT_RANGE = 0, 1, 2, 3, 4, 5, 7, 8, 9
END_CHECKSUM_AT = 8  # the END record's checksum of the stream before it


@attrs.frozen
class StreamRecord:
    offset: int  # of the header, from the stream's start
    type: int
    payload: int  # bytes after the header

    @property
    def payload_at(self) -> int:
        return self.offset + HEADER


def _up8(n: int) -> int:
    return (n + 7) & ~7


def _payload_size(kind: int, header: bytes) -> int:
    u = header[8:]
    if kind == BEGIN:
        return int(struct.unpack_from("<I", header, 4)[0])
    if kind == OBJECT:
        bonuslen, raw_bonuslen = struct.unpack_from("<I", u, 20)[0], struct.unpack_from("<I", u, 28)[0]
        return int(raw_bonuslen or _up8(bonuslen))
    if kind == WRITE:
        logical, compression, compressed = struct.unpack_from("<Q", u, 24)[0], u[42], struct.unpack_from("<Q", u, 88)[0]
        return int(compressed if compression else logical)
    if kind == SPILL:
        length, compression, compressed = struct.unpack_from("<Q", u, 8)[0], u[25], struct.unpack_from("<Q", u, 32)[0]
        return int(compressed if compression else length)
    if kind == WRITE_EMBEDDED:
        return _up8(struct.unpack_from("<I", u, 44)[0])
    if kind in (FREEOBJECTS, FREE, END, OBJECT_RANGE):
        return 0
    raise ValueError(f"record type {kind}: not one a plain lzc_send writes")


def records(stream: bytes | bytearray) -> Iterator[StreamRecord]:
    """Every record of one (non-compound) stream, BEGIN to END."""
    at = 0
    while at < len(stream):
        header = bytes(stream[at : at + HEADER])
        kind = struct.unpack_from("<I", header)[0]
        record = StreamRecord(at, kind, _payload_size(kind, header))
        yield record
        at += HEADER + record.payload
        if kind == END:
            return
    raise ValueError("the stream ends without an END record")


def zero_record_checksums(stream: bytearray) -> None:
    """Zero every record checksum (BEGIN has none): ZFS then skips those comparisons."""
    for record in records(stream):
        if record.type != BEGIN:
            stream[record.offset + CHECKSUM_AT : record.offset + HEADER] = bytes(32)
