"""The bundle file format, version 1: its layout on disk, and the reading of its records.

A bundle holds one or more *parts* (each one ZFS send stream: a full stream of the first
snapshot, then incremental streams to each later one) and the caller's metadata. Each
part's stream is stored raw and contiguous, so that ZFS writes it straight into the file
(``lzc_send`` into the file's descriptor) and reads it straight back (``lzc_receive``
from a descriptor seeked to the part's offset), without passing through Python. Every
byte is still covered by a digest, so a flipped byte, a truncated file, a file that is
not a bundle and a bundle from a newer format are each reported precisely. Nothing here
knows about ZFS.

Layout (integers big-endian)::

    header   b"DSGBUNDL"  u32 format version
    records  type (1 byte)  u64 payload length  payload  sha256(type + length + payload)
    M  metadata        JSON object, the caller's                                  (once, first)
    per part:
      B  part begin    JSON {"index", "info"}
      S  stream        b"S" u64 length, then the raw stream bytes: no checksum after them
      D  chunk digests the md5 of each CHUNK_SIZE piece of the stream, in order (16 bytes
                       each, binary), then the record's sha256 like any record
      E  part end      JSON {"index", "size", "chunk_size", "algorithm": "md5",
                       "digest": md5 of the D payload (all the chunk digests)}
    T  trailer         JSON {"part_count", "parts": [{"index", "info", "size", "digest",
                       "offset"}], "total_size", "structure_sha256"}          (once, last)
    footer   u64 offset of the trailer record  b"DSGB-END"

A part's ``offset`` is the file offset of its stream's first byte. ``structure_sha256`` is
the sha256 of every byte before the trailer except the raw stream bytes: the header, every
record (the S headers with their lengths, the D records with the chunk digests). So the
chunk digests cover the stream bytes, and the structure hash covers the chunk digests,
the lengths and the order and presence of everything: together every byte of the file.
The chunk digests are binary, in their own record, rather than a JSON list in the E record,
so that reading them takes constant memory however long the stream (a 10 TiB part has ten
million chunks; as a JSON list in Python that would be about a gigabyte). Why md5, and
how the stream bytes are digested: ``digests``.

JSON records are capped at MAX_JSON_SIZE, and every length is checked against its cap and
the file's size before anything is read, so a damaged length can never make a reader
allocate more. ``RecordReader`` and ``walk`` read and check the records (every one but
the stream bytes, which ``reader`` checks); ``writer`` writes them.

``BundleInfo.parts`` and ``PartSummary.index`` count from 0; messages count parts and
chunks from 1 ("part 1" is the first), as a user would.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from collections.abc import Mapping
from typing import Any, BinaryIO, TypeVar

import attrs

from ..errors import (
    BundleCorruptError,
    BundleError,
    BundleTruncatedError,
    BundleVersionError,
    NotABundleError,
)
from . import safejson

FORMAT_VERSION = 1
MAGIC = b"DSGBUNDL"
END_MAGIC = b"DSGB-END"
CHUNK_SIZE = 1 << 20
CHUNK_ALGORITHM = "md5"
MAX_JSON_SIZE = 16 << 20  # the metadata and the trailer
MAX_PART_RECORD = 64 << 10  # a part's begin and end records: a part's info is small
MAX_PARTS = 100_000

METADATA, PART_BEGIN, STREAM, CHUNK_DIGESTS, PART_END, TRAILER = b"M", b"B", b"S", b"D", b"E", b"T"
_KIND = {
    METADATA: "metadata record",
    PART_BEGIN: "part begin record",
    STREAM: "stream header",
    CHUNK_DIGESTS: "chunk digests record",
    PART_END: "part end record",
    TRAILER: "trailer record",
}

HEADER = struct.Struct(">8sI")
RECORD = struct.Struct(">cQ")  # a record's head; also the stream header (b"S", length)
FOOTER = struct.Struct(">Q8s")
_CHECK_SIZE = 32  # the sha256 after each record
_OVERHEAD = RECORD.size + _CHECK_SIZE
CHUNK_DIGEST_SIZE = 16  # md5
UNFINISHED = 2**64 - 1  # the stream length until the part is whole: past any file's end
_PIECE = 64 << 10  # reads of a chunk digests record
_MD5_HEX, _SHA256_HEX = re.compile("[0-9a-f]{32}"), re.compile("[0-9a-f]{64}")

_T = TypeVar("_T")


@attrs.frozen
class PartSummary:
    """One part: its position, the caller's description, its stream's size, its digest (hex
    md5 of its chunk digests: it identifies the content, it is not the md5 of the stream)
    and ``offset``, the file offset of the stream's first byte."""

    index: int
    info: Mapping[str, Any]
    size: int
    digest: str
    offset: int


@attrs.frozen
class BundleInfo:
    format_version: int
    metadata: Mapping[str, Any]
    parts: tuple[PartSummary, ...]
    total_size: int  # stream bytes, all parts
    file_size: int
    # The trailer's hash of everything but the stream bytes (the chunk digests included):
    # with the parts' digests it identifies the whole file, at no cost to compute.
    structure_sha256: str = ""


def chunk_count(size: int) -> int:
    return -(-size // CHUNK_SIZE)


# ---------------------------------------------------------------------------- reading the records
@attrs.frozen
class _Trailer:
    offset: int
    parts: tuple[PartSummary, ...]
    total_size: int
    structure_sha256: str


@attrs.frozen
class PartRecords:
    """A part as its records describe it; ``digests_at`` is the file offset of its chunk
    digests (the D record's payload)."""

    index: int
    info: Mapping[str, Any] | None  # None: not kept (the trailer could not be read first)
    offset: int
    size: int
    digests_at: int
    digest: str

    def summary(self) -> PartSummary:
        return PartSummary(self.index, self.info, self.size, self.digest, self.offset)  # type: ignore[arg-type]


class RecordReader:
    """Reads one open bundle's records front to back, checking as it goes, and the stream
    bytes through the descriptor. ``where`` names the part of the file being read, for
    messages."""

    def __init__(self, f: BinaryIO, name: str, size: int, *, hashing: bool = True) -> None:
        self.f, self.fd, self.name, self.size = f, f.fileno(), name, size
        self.offset = 0
        self.structure = hashlib.sha256() if hashing else None
        self.where = "the header"
        # Until the footer is found the file may be cut short anywhere: running out of
        # data means truncation. Once it is found, the file is whole and an overrun is a
        # damaged length.
        self.complete = False
        self.bound = size  # where records other than the trailer must end
        self.trailer_bound = size
        self.trailer: _Trailer | None = None
        self.tail_error: BundleError | None = None

    def corrupt(self, detail: str) -> BundleCorruptError:
        where = "" if self.where in detail else f", in {self.where}"
        return BundleCorruptError(
            f"{self.name} is damaged: {detail}{where}",
            hint="its bytes changed in storage or in transfer; copy it again from its source",
        )

    def truncated(self, end: int) -> BundleTruncatedError:
        return BundleTruncatedError(
            f"{self.name} is truncated: it ends at byte {end}, inside {self.where} (expected more data)",
            hint="an export or a copy was cut short; make or copy it again",
        )

    def overrun(self, what: str, start: int, length: int, bound: int) -> BundleError:
        if not self.complete:
            return self.truncated(self.size)
        return self.corrupt(f"the {what} at byte {start} claims {length} bytes, running past byte {bound}")

    def seek(self, offset: int) -> None:
        self.f.seek(offset)
        self.offset = offset

    def read(self, n: int, *, hashed: bool = True) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise self.truncated(self.offset + len(data))
        self.offset += n
        if hashed and self.structure is not None:
            self.structure.update(data)
        return data

    def pread(self, offset: int, n: int) -> bytes:
        """Bytes of a range already checked to lie in the file (so a short read means it shrank)."""
        data = os.pread(self.fd, n, offset)
        if len(data) != n:
            raise self.truncated(offset + len(data))
        return data

    def header(self) -> int:
        data = self.f.read(HEADER.size)
        if data[: len(MAGIC)] != MAGIC:
            what = "is empty" if not data else f"does not start with {MAGIC.decode()}"
            raise NotABundleError(f"{self.name} is not a dsg-storage bundle: it {what}")
        self.f.seek(0)
        _, version = HEADER.unpack(self.read(HEADER.size))
        if version > FORMAT_VERSION:
            raise BundleVersionError(
                f"{self.name} is bundle format version {version}, made by a newer dsg-storage; "
                f"this one reads format {FORMAT_VERSION} and older",
                hint="read it with a newer dsg-storage",
            )
        if version < 1:
            raise self.corrupt(f"format version {version} does not exist")
        return int(version)

    def head(self, allowed: tuple[bytes, ...], what: str) -> tuple[bytes, int, int, bytes]:
        """Read a record's head (or a stream header): (type, length, its offset, its bytes).
        Refuses a type not in ``allowed``, ``what`` saying what was expected."""
        start = self.offset
        head = self.read(RECORD.size, hashed=False)
        rtype, length = RECORD.unpack(head)
        kind = _KIND.get(rtype)
        if kind is None:
            raise self.corrupt(f"byte {start} holds an unknown record type {rtype!r}")
        if rtype not in allowed:
            raise self.corrupt(f"byte {start} holds a {kind} where {what} should be")
        if rtype == TRAILER:  # the structure hash covers what precedes the trailer
            self.where = "the trailer"
        elif self.structure is not None:
            self.structure.update(head)
        return rtype, int(length), start, head

    def record(self, allowed: tuple[bytes, ...], what: str) -> tuple[bytes, bytes, int]:
        """Read the next JSON record, checked: (type, payload, its offset)."""
        rtype, length, start, head = self.head(allowed, what)
        kind = _KIND[rtype]
        limit = MAX_PART_RECORD if rtype in (PART_BEGIN, PART_END) else MAX_JSON_SIZE
        if length > limit:
            raise self.corrupt(f"the {kind} at byte {start} claims {length} bytes, more than its limit {limit}")
        bound = self.trailer_bound if rtype == TRAILER else self.bound
        if start + _OVERHEAD + length > bound:
            raise self.overrun(kind, start, length, bound)
        hashed = rtype != TRAILER
        payload = self.read(length, hashed=hashed)
        check = hashlib.sha256(head)
        check.update(payload)
        if self.read(_CHECK_SIZE, hashed=hashed) != check.digest():
            raise self.corrupt(f"checksum mismatch in the {kind} at byte {start}")
        return rtype, payload, start

    def json(self, payload: bytes, start: int, kind: bytes) -> dict[str, Any]:
        try:
            value = safejson.loads(payload, max_size=MAX_JSON_SIZE)
        except safejson.JsonLimitError as exc:
            raise self.corrupt(f"the {_KIND[kind]} at byte {start} cannot be read: {exc}") from None
        if not isinstance(value, dict):
            raise self.corrupt(f"the {_KIND[kind]} at byte {start} is not a JSON object")
        return value

    def field(self, obj: Mapping[str, Any], key: str, kind: type[_T], what: str) -> _T:
        value = obj.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.corrupt(f"the {what} has no valid {key!r}")
        if isinstance(value, int) and value < 0:
            raise self.corrupt(f"the {what} has a negative {key!r}")
        return value

    def probe_tail(self) -> None:
        """Find the footer and read the trailer it points at, without reading what lies
        between; on failure keep the error in ``tail_error`` (a full walk explains better)."""
        size, footer_at = self.size, self.size - FOOTER.size
        offset, magic = FOOTER.unpack(self._pread(footer_at, FOOTER.size)) if footer_at >= HEADER.size else (0, b"")
        if magic != END_MAGIC:
            self.tail_error = BundleTruncatedError(
                f"{self.name} is truncated or damaged: it does not end with the bundle footer",
                hint="an export or a copy was cut short; make or copy it again",
            )
            return
        self.complete, self.bound, self.trailer_bound = True, footer_at, footer_at
        tail = RecordReader(self.f, self.name, size, hashing=False)
        tail.complete, tail.bound, tail.trailer_bound, tail.where = True, footer_at, footer_at, "the trailer"
        try:
            if not HEADER.size <= offset <= footer_at - _OVERHEAD:
                tail.where = "the footer"
                raise tail.corrupt(f"the footer points at byte {offset} for the trailer, outside the file")
            tail.seek(offset)
            _, payload, _ = tail.record((TRAILER,), f"the trailer the footer points at (byte {offset})")
            if tail.offset != footer_at:
                raise tail.corrupt(f"the trailer at byte {offset} does not end where the footer starts")
            self.trailer = tail.parse_trailer(payload, offset)
        except BundleError as exc:
            self.tail_error = exc
            return
        self.bound = offset

    def _pread(self, offset: int, n: int) -> bytes:
        self.f.seek(offset)
        return self.f.read(n)

    def parse_trailer(self, payload: bytes, start: int) -> _Trailer:
        trailer = self.json(payload, start, TRAILER)
        count = self.field(trailer, "part_count", int, "trailer")
        entries = self.field(trailer, "parts", list, "trailer")
        if len(entries) != count:
            raise self.corrupt(f"the trailer lists {len(entries)} parts but counts {count}")
        if count > MAX_PARTS:
            raise self.corrupt(f"the trailer lists {count} parts, more than the limit {MAX_PARTS}")
        parts = []
        for index, entry in enumerate(entries):
            what = f"trailer's entry for part {index + 1}"
            if not isinstance(entry, dict) or self.field(entry, "index", int, what) != index:
                raise self.corrupt(f"the {what} is not valid")
            summary = PartSummary(
                index,
                self.field(entry, "info", dict, what),
                self.field(entry, "size", int, what),
                self.field(entry, "digest", str, what),
                self.field(entry, "offset", int, what),
            )
            # ``inspect`` trusts these without reading the parts, and a reader preads
            # ``size`` bytes at ``offset``: each stream lies between the header and
            # the trailer (no negative or past-the-end offset, nothing beyond a u64).
            if not HEADER.size + _OVERHEAD <= summary.offset <= start or summary.size > start - summary.offset:
                raise self.corrupt(
                    f"the {what} puts its {summary.size} stream bytes at byte {summary.offset}, "
                    f"outside the bundle's parts (bytes {HEADER.size + _OVERHEAD} to {start})"
                )
            if not _MD5_HEX.fullmatch(summary.digest):
                raise self.corrupt(f"the {what} has a digest that is not 32 hexadecimal digits")
            parts.append(summary)
        total = self.field(trailer, "total_size", int, "trailer")
        if total != sum(part.size for part in parts):
            raise self.corrupt(f"the trailer's total size {total} is not the sum of its parts' sizes")
        structure = self.field(trailer, "structure_sha256", str, "trailer")
        if not _SHA256_HEX.fullmatch(structure):
            raise self.corrupt("the trailer's structure_sha256 is not 64 hexadecimal digits")
        return _Trailer(start, tuple(parts), total, structure)


# Reading is in two passes. The first (``walk``) reads every record but no stream byte:
# the structure, every record's checksum, the chunk digests against their part's digest,
# the structure hash, the trailer and the footer; it is quick, so damage there and a
# truncation are found at once. The second reads the streams and checks each chunk.
def walk(r: RecordReader, version: int, metadata: dict[str, Any]) -> tuple[BundleInfo, list[PartRecords]]:
    """The records after the metadata, in order, to the end of the file."""
    parts: list[PartRecords] = []
    while True:
        index = len(parts)
        r.where = f"the start of part {index + 1} or the trailer"
        rtype, payload, start = r.record((PART_BEGIN, TRAILER), "a part begin record or the trailer")
        if rtype == TRAILER:
            return _finish(r, payload, start, version=version, metadata=metadata, parts=parts), parts
        if index >= MAX_PARTS:
            raise r.corrupt(f"it holds more than {MAX_PARTS} parts, the limit")
        begin = r.json(payload, start, PART_BEGIN)
        if r.field(begin, "index", int, "part begin record") != index:
            raise r.corrupt(f"the part begin record at byte {start} is numbered {begin['index']}, not {index}")
        r.where = f"part {index + 1}"
        part = _read_part(r, index, r.field(begin, "info", dict, "part begin record"))
        if r.trailer is not None:  # compare each part as it is read: nothing piles up
            if index >= len(r.trailer.parts):
                raise r.corrupt(f"part {index + 1} is not in the trailer, which lists {len(r.trailer.parts)} parts")
            listed = r.trailer.parts[index]
            if part.summary() != listed:
                raise r.corrupt(f"the trailer's entry for part {index + 1} does not match the part")
            part = attrs.evolve(part, info=listed.info)  # one copy of the info, the trailer's
        else:  # the walk is only after a precise error: keep no info, memory stays small
            part = attrs.evolve(part, info=None)
        parts.append(part)


def _read_part(r: RecordReader, index: int, info: dict[str, Any]) -> PartRecords:
    """A part's stream header, chunk digests and end record, seeking over the stream."""
    _, size, header_at, _ = r.head((STREAM,), f"the stream of part {index + 1}")
    start = r.offset
    digests_size = chunk_count(size) * CHUNK_DIGEST_SIZE
    # The stream, its digests and at least an empty end record must fit.
    if start + size + _OVERHEAD + digests_size + _OVERHEAD > r.bound:
        raise r.overrun(_KIND[STREAM], header_at, size, r.bound)
    r.seek(start + size)
    _, length, digests_head_at, head = r.head((CHUNK_DIGESTS,), f"the chunk digests of part {index + 1}")
    if length != digests_size:
        raise r.corrupt(
            f"the chunk digests record at byte {digests_head_at} claims {length} bytes, but a stream of {size} bytes "
            f"has {chunk_count(size)} chunks, so {digests_size} bytes of digests"
        )
    check, digest = hashlib.sha256(head), hashlib.md5(usedforsecurity=False)
    for at in range(0, length, _PIECE):
        piece = r.read(min(_PIECE, length - at))
        check.update(piece)
        digest.update(piece)
    if r.read(_CHECK_SIZE) != check.digest():
        raise r.corrupt(f"checksum mismatch in the chunk digests record at byte {digests_head_at}")
    _, payload, end_at = r.record((PART_END,), f"the end record of part {index + 1}")
    end = r.json(payload, end_at, PART_END)
    what = "part end record"
    if r.field(end, "index", int, what) != index:
        raise r.corrupt(f"the part end record at byte {end_at} is numbered {end['index']}, not {index}")
    recorded = r.field(end, "size", int, what)
    if recorded != size:
        raise r.corrupt(f"the stream holds {size} bytes but the part end record at byte {end_at} says {recorded}")
    if r.field(end, "chunk_size", int, what) != CHUNK_SIZE or r.field(end, "algorithm", str, what) != CHUNK_ALGORITHM:
        raise r.corrupt(
            f"the part end record at byte {end_at} names chunks of {end['chunk_size']} bytes digested with "
            f"{end['algorithm']!r}; format {FORMAT_VERSION} has {CHUNK_SIZE} and {CHUNK_ALGORITHM!r}"
        )
    recorded_digest = r.field(end, "digest", str, what)
    if recorded_digest != digest.hexdigest():
        raise r.corrupt(
            f"the chunk digests at byte {digests_head_at} do not match the digest in the part end record "
            f"at byte {end_at}"
        )
    return PartRecords(index, info, start, size, digests_head_at + RECORD.size, recorded_digest)


def _finish(
    r: RecordReader, payload: bytes, start: int, *, version: int, metadata: dict[str, Any], parts: list[PartRecords]
) -> BundleInfo:
    r.where = "the trailer"
    if r.trailer is not None and r.trailer.offset != start:
        raise r.corrupt(f"a trailer record is at byte {start} but the footer points at byte {r.trailer.offset}")
    trailer = r.parse_trailer(payload, start)
    for found, listed in zip(parts, trailer.parts, strict=False):
        unkept = found.info is None  # compare all but the info then
        if (found.summary() if not unkept else attrs.evolve(found.summary(), info=listed.info)) != listed:
            raise r.corrupt(f"its entry for part {found.index + 1} does not match the part")
    if len(trailer.parts) != len(parts):
        raise r.corrupt(f"it lists {len(trailer.parts)} parts but the bundle holds {len(parts)}")
    if r.structure is not None and r.structure.hexdigest() != trailer.structure_sha256:
        raise r.corrupt(
            f"the sha256 of the bundle's structure (bytes 0 to {start} but the streams) "
            "does not match the one the trailer records"
        )
    r.where = "the footer"
    footer_at = r.offset
    offset, magic = FOOTER.unpack(r.read(FOOTER.size, hashed=False))
    if magic != END_MAGIC:
        raise r.corrupt(f"the footer at byte {footer_at} lacks its end marker")
    if offset != start:
        raise r.corrupt(f"the footer points at byte {offset} but the trailer is at byte {start}")
    if r.offset != r.size:
        raise r.corrupt(f"{r.size - r.offset} unexpected bytes follow the footer")
    return BundleInfo(version, metadata, trailer.parts, trailer.total_size, r.size, trailer.structure_sha256)
