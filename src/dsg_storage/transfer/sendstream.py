"""The first record of a ZFS send stream (DRR_BEGIN): what the stream says it is.

A bundle's metadata claims which snapshot each stream carries and which one it is
incremental from; the streams say so themselves, in their BEGIN record, which ZFS
trusts on receive. ``check_chain`` holds the two against each other, so a stream from
an older snapshot, a full stream posing as an incremental or a stream of another
snapshot is refused before anything is received, with a message that says what lies.

The record (``dmu_replay_record_t``, include/sys/zfs_ioctl.h in OpenZFS) is 312 bytes
in the sender's byte order, told by the magic::

    0   u32  drr_type          0 = DRR_BEGIN
    4   u32  drr_payloadlen    an nvlist after the record (resume, raw sends)
    8   u64  drr_magic         0x2F5BACBAC (DMU_BACKUP_MAGIC)
    16  u64  drr_versioninfo   bits 0-1: header type (1 substream, 2 compound),
                               bits 2-31: feature flags
    24  u64  drr_creation_time
    32  u32  drr_type          objset type (2 = ZFS filesystem)
    36  u32  drr_flags         bit 0: a clone stream (DRR_FLAG_CLONE)
    40  u64  drr_toguid        the snapshot the stream makes
    48  u64  drr_fromguid      the snapshot it is incremental from; 0: a full stream
    56  char drr_toname[256]   the sender's full snapshot name, NUL-terminated
"""

from __future__ import annotations

import struct

import attrs

from ..errors import BundleError
from .metadata import BundleMetadata, PartInfo

RECORD_SIZE = 312
DRR_BEGIN = 0
MAGIC = 0x2F5BACBAC
SUBSTREAM, COMPOUNDSTREAM = 1, 2
FLAG_CLONE = 1 << 0
OBJSET_ZFS = 2
_LAYOUT = "I I Q Q Q I I Q Q 256s"


@attrs.frozen
class BeginRecord:
    toguid: int
    fromguid: int  # 0 for a full stream
    toname: str  # pool/dataset@snapshot, as the sender named it
    flags: int
    header_type: int
    features: int
    objset_type: int
    creation_time: int

    @property
    def snapshot(self) -> str:
        return self.toname.split("@", 1)[1] if "@" in self.toname else ""

    @property
    def dataset(self) -> str:
        return self.toname.split("@", 1)[0]


def parse_begin(data: bytes, where: str = "the stream") -> BeginRecord:
    """Parse the BEGIN record at the start of ``data`` (at least RECORD_SIZE bytes)."""
    if len(data) < RECORD_SIZE:
        raise BundleError(f"{where} is {len(data)} bytes long, too short for a ZFS send stream")
    for order in "<>":
        fields = struct.unpack_from(order + _LAYOUT, data)
        if fields[2] == MAGIC:
            break
    else:
        raise BundleError(f"{where} is not a ZFS send stream (no stream magic at its start)")
    drr_type, _, _, versioninfo, creation, objset, flags, toguid, fromguid, rawname = fields
    if drr_type != DRR_BEGIN:
        raise BundleError(f"{where} does not start with a BEGIN record (record type {drr_type})")
    name, nul, _ = rawname.partition(b"\0")
    try:
        toname = name.decode("utf-8")
    except UnicodeDecodeError:
        toname = ""
    if not nul or not toname or "@" not in toname:
        raise BundleError(f"{where}'s BEGIN record names no snapshot")
    return BeginRecord(
        toguid=toguid,
        fromguid=fromguid,
        toname=toname,
        flags=flags,
        header_type=versioninfo & 0x3,
        features=(versioninfo >> 2) & 0x3FFFFFFF,
        objset_type=objset,
        creation_time=creation,
    )


def check_chain(meta: BundleMetadata, begins: list[BeginRecord], source: str) -> None:
    """Every stream is the one the metadata says: snapshot ``i`` (name and GUID) from the
    repository, a single-snapshot stream of a filesystem, full for a full bundle's first
    part, else incremental from the claimed base (first part) or the previous snapshot."""
    if len(begins) != len(meta.snapshots):
        raise BundleError(f"{source}: {len(begins)} streams for {len(meta.snapshots)} snapshots")
    for index, (begin, expected) in enumerate(zip(begins, meta.parts(), strict=True)):
        part = f"{source}: part {index + 1} (snapshot {expected.snapshot})"
        if begin.header_type != SUBSTREAM:
            raise BundleError(f"{part} is a compound stream (zfs send -R/-I), not the stream of one snapshot")
        if begin.objset_type != OBJSET_ZFS:
            raise BundleError(f"{part} is the stream of a dataset of type {begin.objset_type}, not a filesystem")
        if begin.flags & FLAG_CLONE:
            raise BundleError(f"{part} is a clone stream, which a bundle never holds")
        if begin.snapshot != expected.snapshot or begin.dataset != meta.repository:
            raise BundleError(f"{part}: its stream carries {begin.toname}, not {meta.repository}@{expected.snapshot}")
        if begin.toguid != expected.guid:
            raise BundleError(f"{part}: its stream makes a snapshot of GUID {begin.toguid}, not {expected.guid}")
        _check_from(begin, expected, part)


def _check_from(begin: BeginRecord, expected: PartInfo, part: str) -> None:
    """A stream is incremental from the snapshot the metadata says, or full when it says none."""
    want_from = expected.from_guid or 0
    if begin.fromguid != want_from:
        if want_from == 0:
            raise BundleError(f"{part}: the first stream of a full bundle must be full, but it is incremental")
        if begin.fromguid == 0:
            raise BundleError(
                f"{part}: a full stream poses as incremental from {expected.from_name} (GUID {want_from})"
            )
        raise BundleError(
            f"{part}: its stream is incremental from GUID {begin.fromguid}, not from "
            f"{expected.from_name} (GUID {want_from}) as the metadata says"
        )


def make_begin(
    toname: str, toguid: int, fromguid: int = 0, *, flags: int = 0, header_type: int = SUBSTREAM, order: str = "<"
) -> bytes:
    """A BEGIN record (for tests and crafted streams): the inverse of ``parse_begin``."""
    return struct.pack(
        order + _LAYOUT,
        DRR_BEGIN,
        0,
        MAGIC,
        header_type | (4 << 2),
        0,
        OBJSET_ZFS,
        flags,
        toguid,
        fromguid,
        toname.encode(),
    )
