"""The bundle file format, version 1: ZFS send streams and JSON metadata in one checked file.

A bundle holds one or more *parts* (each one ZFS send stream: a full stream of the first
snapshot, then incremental streams to each later one) and the caller's metadata. Every
byte is covered by a checksum, so a flipped byte, a truncated file, a file that is not a
bundle and a bundle from a newer format are each reported precisely. Nothing here knows
about ZFS.

Layout (integers big-endian)::

    header   b"DSGBUNDL"  u32 format version
    records  type (1 byte)  u64 payload length  payload  sha256(type + length + payload)
               M  metadata    JSON object, the caller's                  (once, first)
               B  part begin  JSON {"index", "info"}                      \\
               C  chunk       raw stream bytes, at most CHUNK_SIZE        | per part
               E  part end    JSON {"index", "size", "sha256"}            /
               T  trailer     JSON {"part_count", "parts": [{"index", "info", "size",
                              "sha256"}], "total_size", "file_sha256"}    (once, last)
    footer   u64 offset of the trailer record  b"DSGB-END"

``file_sha256`` is the sha256 of every byte before the trailer record; a part's
``sha256`` is that of its stream alone. JSON records are capped at MAX_JSON_SIZE and
chunks at CHUNK_SIZE, and a length is checked against its cap and the file's size before
anything is read, so a damaged length can never make a reader allocate more. Readers and
the writer hold at most two chunks in memory, whatever the bundle's size.

API::

    with open(path, "wb") as f, BundleWriter(f, {"repository": ...}) as writer:
        writer.add_part({"snapshot": ...}, functools.partial(os.read, fd))
    # leaving the block closes the writer (trailer and footer); the caller fsyncs

    inspect(path) -> BundleInfo   # header, metadata, footer and trailer only: cheap
    verify(path) -> BundleInfo    # one full pass over every byte
    for part, chunks in iter_parts(path):
        for chunk in chunks: ...  # feed a receiver; a BundleError means abort it

``BundleInfo.parts`` and ``PartSummary.index`` count from 0; messages count parts from 1
("part 1" is the first), as a user would.

After a crash: a writer that did not reach ``close`` leaves a file without trailer or
footer, which every reader rejects as truncated. Write to a temporary name, close,
fsync and rename, so that a bundle under its final name is always whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable, Iterator, Mapping
from typing import Any, BinaryIO, Self, TypeVar

import attrs

from ._errors import (
    BundleCorruptError,
    BundleError,
    BundleTruncatedError,
    BundleVersionError,
    InvalidArgumentError,
    NotABundleError,
)

ProgressFn = Callable[[int, int | None], None]
"""Called with (stream bytes done, total stream bytes or None when unknown), per chunk."""

FORMAT_VERSION = 1
MAGIC = b"DSGBUNDL"
END_MAGIC = b"DSGB-END"
CHUNK_SIZE = 1 << 20
MAX_JSON_SIZE = 16 << 20

METADATA, PART_BEGIN, CHUNK, PART_END, TRAILER = b"M", b"B", b"C", b"E", b"T"
_KIND = {METADATA: "metadata", PART_BEGIN: "part begin", CHUNK: "chunk", PART_END: "part end", TRAILER: "trailer"}

_HEADER = struct.Struct(">8sI")
_RECORD = struct.Struct(">cQ")
_FOOTER = struct.Struct(">Q8s")
_DIGEST_SIZE = 32
_OVERHEAD = _RECORD.size + _DIGEST_SIZE

_T = TypeVar("_T")


@attrs.frozen
class PartSummary:
    """One part: its position, the caller's description, and its stream's size and sha256 (hex)."""

    index: int
    info: Mapping[str, Any]
    size: int
    sha256: str


@attrs.frozen
class BundleInfo:
    format_version: int
    metadata: Mapping[str, Any]
    parts: tuple[PartSummary, ...]
    total_size: int  # stream bytes, all parts
    file_size: int


# ---------------------------------------------------------------------------- writing
class BundleWriter:
    """Writes a bundle through ``fileobj`` (from its current position, which must be the
    start of the file for ``inspect`` to find the footer). Never seeks, so a pipe works;
    never fsyncs: durability is the caller's decision. Leaving the ``with`` block without
    an exception closes the writer; with one, the file is left without its footer, which
    readers reject as truncated."""

    def __init__(
        self,
        fileobj: BinaryIO,
        metadata: Mapping[str, Any],
        *,
        progress: ProgressFn | None = None,
        total: int | None = None,
    ) -> None:
        if not isinstance(metadata, Mapping):
            raise InvalidArgumentError(f"bundle metadata must be a mapping, not {type(metadata).__name__}")
        self._file = fileobj
        self._progress = progress
        self._total = total
        self._file_hash = hashlib.sha256()  # every byte before the trailer
        self._offset = 0
        self._done = 0  # stream bytes, all parts
        self._parts: list[PartSummary] = []
        encoded = _encode(metadata, "metadata")  # before writing anything
        self._metadata: dict[str, Any] = json.loads(encoded)  # as readers will see it (tuples become lists...)
        self._info: BundleInfo | None = None
        self._broken = False
        self._write(_HEADER.pack(MAGIC, FORMAT_VERSION))
        self._record(METADATA, encoded)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.close()

    def add_part(self, info: Mapping[str, Any], read: Callable[[int], bytes]) -> PartSummary:
        """Append a part whose stream comes from ``read(n)`` (at most ``n`` bytes; ``b""``
        at its end, like ``os.read`` on a pipe). Short reads are gathered into full chunks."""
        self._check_open()
        index = len(self._parts)
        begin = _encode({"index": index, "info": info}, "part info")
        info = json.loads(begin)["info"]
        self._broken = True  # until the part is whole: a failing read leaves a half part
        self._record(PART_BEGIN, begin)
        digest, size, buffer = hashlib.sha256(), 0, bytearray()
        while True:
            data = read(CHUNK_SIZE - len(buffer))
            if not data:
                break
            if not buffer and len(data) == CHUNK_SIZE:  # a whole chunk in one read: no copy
                digest.update(data)
                size += self._chunk(data)
                continue
            buffer += data
            while len(buffer) >= CHUNK_SIZE:  # more than once only if read() returned more than asked
                chunk = buffer if len(buffer) == CHUNK_SIZE else buffer[:CHUNK_SIZE]
                digest.update(chunk)
                size += self._chunk(chunk)
                del buffer[:CHUNK_SIZE]
        if buffer:
            digest.update(buffer)
            size += self._chunk(buffer)
        summary = PartSummary(index, info, size, digest.hexdigest())
        self._record(PART_END, _encode({"index": index, "size": size, "sha256": summary.sha256}, "part end"))
        self._parts.append(summary)
        self._broken = False
        return summary

    def close(self) -> BundleInfo:
        """Write the trailer and the footer and flush; a second call returns the same."""
        if self._info is not None:
            return self._info
        self._check_open()
        trailer_offset = self._offset
        total = sum(part.size for part in self._parts)
        trailer = {
            "part_count": len(self._parts),
            "parts": [attrs.asdict(part) for part in self._parts],
            "total_size": total,
            "file_sha256": self._file_hash.hexdigest(),
        }
        self._record(TRAILER, _encode(trailer, "trailer"))
        self._write(_FOOTER.pack(trailer_offset, END_MAGIC))
        self._file.flush()
        self._info = BundleInfo(FORMAT_VERSION, self._metadata, tuple(self._parts), total, self._offset)
        return self._info

    def _check_open(self) -> None:
        if self._info is not None:
            raise InvalidArgumentError("the bundle writer is closed")
        if self._broken:
            raise InvalidArgumentError("a part failed half-way; this bundle is incomplete and must be discarded")

    def _chunk(self, data: bytes | bytearray) -> int:
        self._record(CHUNK, data)
        self._done += len(data)
        if self._progress is not None:
            self._progress(self._done, self._total)
        return len(data)

    def _record(self, rtype: bytes, payload: bytes | bytearray) -> None:
        head = _RECORD.pack(rtype, len(payload))
        check = hashlib.sha256(head)
        check.update(payload)
        self._write(head)
        self._write(payload)
        self._write(check.digest())

    def _write(self, data: bytes | bytearray) -> None:
        view = memoryview(data)
        while view:  # a raw (unbuffered) file may write less than asked
            view = view[self._file.write(view) :]
        self._file_hash.update(data)  # read before the trailer is written; later bytes do not count
        self._offset += len(data)


def _encode(value: Mapping[str, Any], what: str) -> bytes:
    try:
        data = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"bundle {what} is not JSON-serialisable: {exc}") from None
    if len(data) > MAX_JSON_SIZE:
        raise InvalidArgumentError(f"bundle {what} takes {len(data)} bytes as JSON, more than {MAX_JSON_SIZE}")
    return data


# ---------------------------------------------------------------------------- reading
@attrs.frozen
class _Trailer:
    offset: int
    parts: tuple[PartSummary, ...]
    total_size: int
    file_sha256: str


class _Reader:
    """Reads one open bundle front to back, checking as it goes. ``where`` names the part
    of the file being read, for messages."""

    def __init__(self, f: BinaryIO, name: str, size: int, *, hashing: bool = True) -> None:
        self.f, self.name, self.size = f, name, size
        self.offset = 0
        self.file_hash = hashlib.sha256() if hashing else None
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

    def seek(self, offset: int) -> None:
        self.f.seek(offset)
        self.offset = offset

    def read(self, n: int, *, hashed: bool = True) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise self.truncated(self.offset + len(data))
        self.offset += n
        if hashed and self.file_hash is not None:
            self.file_hash.update(data)
        return data

    def header(self) -> int:
        data = self.f.read(_HEADER.size)
        if data[: len(MAGIC)] != MAGIC:
            what = "is empty" if not data else f"does not start with {MAGIC.decode()}"
            raise NotABundleError(f"{self.name} is not a dsg-storage bundle: it {what}")
        self.f.seek(0)
        _, version = _HEADER.unpack(self.read(_HEADER.size))
        if version > FORMAT_VERSION:
            raise BundleVersionError(
                f"{self.name} is bundle format version {version}, made by a newer dsg-storage; "
                f"this one reads format {FORMAT_VERSION} and older",
                hint="read it with a newer dsg-storage",
            )
        if version < 1:
            raise self.corrupt(f"format version {version} does not exist")
        return int(version)

    def record(self, *, skip_chunk: bool = False) -> tuple[bytes, bytes | None, int, int]:
        """Read the next record: (type, payload, its offset, payload length). The payload
        is None for a chunk skipped (seeked over, unchecked) with ``skip_chunk``."""
        start = self.offset
        head = self.read(_RECORD.size, hashed=False)
        rtype, length = _RECORD.unpack(head)
        kind = _KIND.get(rtype)
        if kind is None:
            raise self.corrupt(f"byte {start} holds an unknown record type {rtype!r}")
        if rtype == TRAILER:
            self.where = "the trailer"
        cap = CHUNK_SIZE if rtype == CHUNK else MAX_JSON_SIZE
        if length > cap:
            raise self.corrupt(f"the {kind} record at byte {start} claims {length} bytes, more than its limit {cap}")
        bound = self.trailer_bound if rtype == TRAILER else self.bound
        end = start + _OVERHEAD + length
        if end > bound:
            if not self.complete:
                raise self.truncated(self.size)
            raise self.corrupt(f"the {kind} record at byte {start} claims {length} bytes, running past byte {bound}")
        hashed = rtype != TRAILER  # the file hash covers what precedes the trailer
        if hashed and self.file_hash is not None:
            self.file_hash.update(head)
        if skip_chunk and rtype == CHUNK:
            self.seek(end)
            return rtype, None, start, length
        payload = self.read(length, hashed=hashed)
        check = hashlib.sha256(head)
        check.update(payload)
        if self.read(_DIGEST_SIZE, hashed=hashed) != check.digest():
            raise self.corrupt(f"checksum mismatch in the {kind} record at byte {start}")
        return rtype, payload, start, length

    def json(self, payload: bytes | None, start: int, kind: bytes) -> dict[str, Any]:
        try:
            value = json.loads(payload or b"")
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise self.corrupt(f"the {_KIND[kind]} record at byte {start} is not valid JSON ({exc})") from None
        if not isinstance(value, dict):
            raise self.corrupt(f"the {_KIND[kind]} record at byte {start} is not a JSON object")
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
        size, footer_at = self.size, self.size - _FOOTER.size
        offset, magic = _FOOTER.unpack(self._pread(footer_at, _FOOTER.size)) if footer_at >= _HEADER.size else (0, b"")
        if magic != END_MAGIC:
            self.tail_error = BundleTruncatedError(
                f"{self.name} is truncated or damaged: it does not end with the bundle footer",
                hint="an export or a copy was cut short; make or copy it again",
            )
            return
        self.complete, self.bound, self.trailer_bound = True, footer_at, footer_at
        tail = _Reader(self.f, self.name, size, hashing=False)
        tail.complete, tail.bound, tail.trailer_bound, tail.where = True, footer_at, footer_at, "the trailer"
        try:
            if not _HEADER.size <= offset <= footer_at - _OVERHEAD:
                tail.where = "the footer"
                raise tail.corrupt(f"the footer points at byte {offset} for the trailer, outside the file")
            tail.seek(offset)
            rtype, payload, _, _ = tail.record()
            if rtype != TRAILER:
                raise tail.corrupt(f"the footer points at byte {offset}, which holds a {_KIND[rtype]} record")
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

    def parse_trailer(self, payload: bytes | None, start: int) -> _Trailer:
        trailer = self.json(payload, start, TRAILER)
        count = self.field(trailer, "part_count", int, "trailer")
        entries = self.field(trailer, "parts", list, "trailer")
        if len(entries) != count:
            raise self.corrupt(f"the trailer lists {len(entries)} parts but counts {count}")
        parts = []
        for index, entry in enumerate(entries):
            what = f"trailer's entry for part {index + 1}"
            if not isinstance(entry, dict) or self.field(entry, "index", int, what) != index:
                raise self.corrupt(f"the {what} is not valid")
            summary = PartSummary(
                index,
                self.field(entry, "info", dict, what),
                self.field(entry, "size", int, what),
                self.field(entry, "sha256", str, what),
            )
            parts.append(summary)
        total = self.field(trailer, "total_size", int, "trailer")
        if total != sum(part.size for part in parts):
            raise self.corrupt(f"the trailer's total size {total} is not the sum of its parts' sizes")
        return _Trailer(start, tuple(parts), total, self.field(trailer, "file_sha256", str, "trailer"))


class _Walk:
    """One pass over the records after the metadata, in order. ``parts()`` yields each part
    with an iterator over its chunks; advancing past a part reads the rest of it. With
    ``skip_chunks`` chunk payloads are seeked over (structure only, no checksums of
    chunks or parts); the chunk iterators then yield nothing."""

    def __init__(
        self,
        r: _Reader,
        metadata: Mapping[str, Any],
        version: int,
        *,
        skip_chunks: bool = False,
        progress: ProgressFn | None = None,
    ) -> None:
        self.r, self.metadata, self.version = r, metadata, version
        self.skip_chunks, self.progress = skip_chunks, progress
        self.done = 0
        self.found: list[PartSummary] = []
        self.failed: BundleError | None = None
        self.info: BundleInfo | None = None

    def run(self) -> BundleInfo:
        for _ in self.parts():
            pass  # parts() drains each part
        assert self.info is not None
        return self.info

    def parts(self) -> Iterator[tuple[PartSummary | None, Iterator[bytes]]]:
        """Yield (the trailer's summary of the part, or None without a trailer; chunks)."""
        r, expected = self.r, self.r.trailer
        while True:
            index = len(self.found)
            r.where = f"the start of part {index + 1} or the trailer"  # record() says which it finds
            rtype, payload, start, _ = r.record()
            if rtype == TRAILER:
                self._finish(payload, start)
                return
            if rtype != PART_BEGIN:
                raise r.corrupt(f"byte {start} holds a {_KIND[rtype]} record where a part or the trailer should start")
            begin = r.json(payload, start, PART_BEGIN)
            if r.field(begin, "index", int, "part begin record") != index:
                raise r.corrupt(f"the part begin record at byte {start} is numbered {begin['index']}, not {index}")
            info = r.field(begin, "info", dict, "part begin record")
            summary = None
            if expected is not None:
                if index >= len(expected.parts) or expected.parts[index].info != info:
                    raise r.corrupt(f"part {index + 1} at byte {start} is not the one the trailer lists")
                summary = expected.parts[index]
            chunks = self._chunks(index, info)
            yield summary, chunks
            for _ in chunks:
                pass
            if self.failed is not None:  # the caller caught an error in the part and went on
                raise self.failed
            if len(self.found) != index + 1:
                raise r.corrupt(f"part {index + 1} was not read to its end")

    def _chunks(self, index: int, info: dict[str, Any]) -> Iterator[bytes]:
        try:
            yield from self._read_part(index, info)
        except BundleError as exc:
            self.failed = exc
            raise

    def _read_part(self, index: int, info: dict[str, Any]) -> Iterator[bytes]:
        r, expected = self.r, self.r.trailer
        r.where = f"part {index + 1}"
        digest, size = hashlib.sha256(), 0
        total = expected.total_size if expected is not None else None
        # One chunk is held back until the next record is read and checked, so the last
        # chunk of a part goes out only after the part's size and sha256 are confirmed: a
        # consumer feeding a receiver never hands over a whole stream that is wrong.
        pending = b""
        while True:
            rtype, payload, start, length = r.record(skip_chunk=self.skip_chunks)
            if rtype != CHUNK:
                break
            size += length
            self.done += length
            if payload is not None:
                digest.update(payload)
            if self.progress is not None:
                self.progress(self.done, total)
            if pending:
                yield pending
            pending = payload or b""
        if rtype != PART_END:
            raise r.corrupt(f"byte {start} holds a {_KIND[rtype]} record where a chunk or the part's end should be")
        end = r.json(payload, start, PART_END)
        if r.field(end, "index", int, "part end record") != index:
            raise r.corrupt(f"the part end record at byte {start} is numbered {end['index']}, not {index}")
        recorded = r.field(end, "size", int, "part end record")
        if recorded != size:
            raise r.corrupt(f"the part holds {size} bytes of stream but its end record at byte {start} says {recorded}")
        sha256 = r.field(end, "sha256", str, "part end record")
        if not self.skip_chunks and sha256 != digest.hexdigest():
            raise r.corrupt(
                f"the stream's sha256 is {digest.hexdigest()} but its end record at byte {start} says {sha256} "
                "(chunks missing, repeated or out of order)"
            )
        summary = PartSummary(index, info, size, sha256)
        if expected is not None and expected.parts[index] != summary:
            raise r.corrupt(f"the part end record at byte {start} does not match the trailer's entry for the part")
        self.found.append(summary)
        if pending:
            yield pending

    def _finish(self, payload: bytes | None, start: int) -> None:
        r = self.r
        r.where = "the trailer"
        if r.trailer is not None and r.trailer.offset != start:
            raise r.corrupt(f"a trailer record is at byte {start} but the footer points at byte {r.trailer.offset}")
        trailer = r.parse_trailer(payload, start)
        for found, listed in zip(self.found, trailer.parts, strict=False):
            if found.size != listed.size or found.sha256 != listed.sha256 or found.info != listed.info:
                raise r.corrupt(f"its entry for part {found.index + 1} does not match the part")
        if len(trailer.parts) != len(self.found):
            raise r.corrupt(f"it lists {len(trailer.parts)} parts but the bundle holds {len(self.found)}")
        if r.file_hash is not None and not self.skip_chunks and r.file_hash.hexdigest() != trailer.file_sha256:
            raise r.corrupt(f"the sha256 of bytes 0 to {start} does not match the one the trailer records")
        r.where = "the footer"
        footer_at = r.offset
        offset, magic = _FOOTER.unpack(r.read(_FOOTER.size, hashed=False))
        if magic != END_MAGIC:
            raise r.corrupt(f"the footer at byte {footer_at} lacks its end marker")
        if offset != start:
            raise r.corrupt(f"the footer points at byte {offset} but the trailer is at byte {start}")
        if r.offset != r.size:
            raise r.corrupt(f"{r.size - r.offset} unexpected bytes follow the footer")
        self.info = BundleInfo(self.version, self.metadata, trailer.parts, trailer.total_size, r.size)


def _open(f: BinaryIO, path: str | os.PathLike[str]) -> tuple[_Reader, int, dict[str, Any]]:
    """Header, footer and trailer (kept in the reader, or the reason it failed), metadata."""
    r = _Reader(f, os.fspath(path), os.fstat(f.fileno()).st_size)
    version = r.header()
    r.probe_tail()  # first: it tells whether running out of data means truncation
    r.seek(_HEADER.size)
    r.where = "the metadata record"
    rtype, payload, start, _ = r.record()
    if rtype != METADATA:
        raise r.corrupt(f"byte {start} holds a {_KIND[rtype]} record where the metadata should be")
    return r, version, r.json(payload, start, METADATA)


def _diagnose(r: _Reader, version: int, metadata: dict[str, Any]) -> BundleError:
    """The footer or trailer is bad: walk the structure (seeking over chunks) for a precise
    error; failing that, the tail's own."""
    assert r.tail_error is not None
    try:
        _Walk(r, metadata, version, skip_chunks=True).run()
    except BundleError as exc:
        return exc
    return r.tail_error


def inspect(path: str | os.PathLike[str]) -> BundleInfo:
    """Header, metadata and trailer, each checked against its own checksum, without reading
    the stream data. Cheap whatever the size; says nothing of the chunks (``verify`` does)."""
    with open(path, "rb") as f:
        r, version, metadata = _open(f, path)
        if r.trailer is None:
            raise _diagnose(r, version, metadata)
        return BundleInfo(version, metadata, r.trailer.parts, r.trailer.total_size, r.size)


def verify(path: str | os.PathLike[str], *, progress: ProgressFn | None = None) -> BundleInfo:
    """Read every byte once: structure, every record's checksum, each part's size and
    sha256, the whole file's sha256, the footer. Raises on the first problem."""
    with open(path, "rb") as f:
        r, version, metadata = _open(f, path)
        info = _Walk(r, metadata, version, progress=progress).run()
        if r.tail_error is not None:  # the walk found the footer sound: the file changed meanwhile
            raise r.tail_error
        return info


def iter_parts(
    path: str | os.PathLike[str], *, progress: ProgressFn | None = None, expect: BundleInfo | None = None
) -> Iterator[tuple[PartSummary, Iterator[bytes]]]:
    """Yield each part's summary (from the trailer) and an iterator over its stream's chunks.

    Everything is checked on the way, as ``verify`` does, so the file may have changed
    since it was verified: a chunk goes out only after its record's checksum matched, and
    a part's last chunk only after the part's size and sha256 matched; on a mismatch the
    chunk iterator raises ``BundleCorruptError`` instead of ending, so a consumer feeding
    a receiver aborts it without committing. Moving to the next part without reading all
    chunks reads (and checks) the rest. A truncated file fails before the first part.
    With ``expect`` (from an earlier ``inspect`` or ``verify``), a bundle whose metadata
    or parts differ from it raises ``BundleError`` before the first part.
    """
    with open(path, "rb") as f:
        r, version, metadata = _open(f, path)
        if r.trailer is None:
            raise _diagnose(r, version, metadata)
        if expect is not None and (expect.metadata != metadata or expect.parts != r.trailer.parts):
            raise BundleError(f"{r.name} changed since it was inspected: its metadata or parts differ")
        for summary, chunks in _Walk(r, metadata, version, progress=progress).parts():
            assert summary is not None  # a trailer was found
            yield summary, chunks
