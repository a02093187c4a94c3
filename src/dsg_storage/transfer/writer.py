"""Writing a bundle (``layout``): ZFS writes each stream straight into the file, and the
writer digests it back (``digests``) and adds the records around it.

    with open(path, "wb") as f, BundleWriter(f, {"repository": ...}) as writer:
        writer.add_part({"snapshot": ...}, lambda fd: lzc_send(snap, base, fd))
        writer.add_part_from({"snapshot": ...}, functools.partial(os.read, pipe_fd))
    # leaving the block closes the writer (trailer and footer); the caller fsyncs

After a crash: a writer that did not reach ``close`` leaves a file without trailer or
footer (and, inside an unfinished part, a stream length of 2**64 - 1), which every reader
rejects as truncated. Write to a temporary name, close, fsync and rename, so that a bundle
under its final name is always whole.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import stat
from collections.abc import Callable, Mapping
from contextlib import closing
from typing import Any, BinaryIO, Self

import attrs

from ..errors import BundleTruncatedError, InvalidArgumentError
from .digests import DigestAhead, ProduceFn, ShortRead, stream_digests
from .layout import (
    CHUNK_ALGORITHM,
    CHUNK_DIGEST_SIZE,
    CHUNK_DIGESTS,
    CHUNK_SIZE,
    END_MAGIC,
    FOOTER,
    FORMAT_VERSION,
    HEADER,
    MAGIC,
    MAX_JSON_SIZE,
    METADATA,
    PART_BEGIN,
    PART_END,
    RECORD,
    STREAM,
    TRAILER,
    UNFINISHED,
    BundleInfo,
    PartSummary,
    chunk_count,
)
from .progress import ProgressFn


class BundleWriter:
    """Writes a bundle into ``fileobj``, a regular file opened for writing at its start
    (``open(path, "wb")``; not in append mode). ZFS writes each stream straight into it,
    and the writer reads the streams back from it to digest them (through the descriptor
    if the file was opened for reading too, else through a second descriptor on the same
    file). Never fsyncs: durability is the caller's decision. Leaving the ``with`` block
    without an exception closes the writer; with one, the file is left without its footer,
    which readers reject as truncated."""

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
        encoded = _encode(metadata, "metadata")  # before writing anything
        self._fd = _writable_fd(fileobj)
        self._source = _readable_twin(fileobj, self._fd)  # None: the descriptor reads too
        self._read_fd = self._fd if self._source is None else self._source.fileno()
        self._file = fileobj
        self._name = str(getattr(fileobj, "name", "the bundle file"))
        self._progress = progress
        self._total = total
        self._structure = hashlib.sha256()  # every byte before the trailer but the streams
        self._offset = 0
        self._done = 0  # stream bytes digested, all parts
        self._parts: list[PartSummary] = []
        self._metadata: dict[str, Any] = json.loads(encoded)  # as readers will see it (tuples become lists...)
        self._info: BundleInfo | None = None
        self._broken = False
        self._write(HEADER.pack(MAGIC, FORMAT_VERSION))
        self._record(METADATA, encoded)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        try:
            if exc_type is None:
                self.close()
        finally:
            self._release()

    def add_part(self, info: Mapping[str, Any], produce: ProduceFn) -> PartSummary:
        """Append a part whose stream ``produce(fd)`` writes into the file's descriptor, from
        its current offset, leaving the offset after the stream (``lzc_send`` does). The
        stream's length is taken from the offset; its bytes are then read back and digested."""
        self._check_open()
        index = len(self._parts)
        begin = _encode({"index": index, "info": info}, "part info")
        self._broken = True  # until the part is whole: a failing producer leaves a half part
        try:
            summary = self._add(index, begin, produce)
        except BaseException:
            self._release()  # the writer can do nothing more
            raise
        self._parts.append(summary)
        self._broken = False
        return summary

    def _add(self, index: int, begin: bytes, produce: ProduceFn) -> PartSummary:
        self._record(PART_BEGIN, begin)
        header_at = self._offset
        self._write(RECORD.pack(STREAM, UNFINISHED), hashed=False)  # hashed once its length is known
        self._file.flush()
        start = self._offset
        position = os.lseek(self._fd, 0, os.SEEK_CUR)
        if position != start:
            raise InvalidArgumentError(
                f"{self._name} is at byte {position}, not at byte {start} where the writer left it: "
                "something else moved or wrote through the file"
            )
        ahead = DigestAhead(self._read_fd, start)
        ahead.run(produce, self._fd)
        end = os.lseek(self._fd, 0, os.SEEK_CUR)
        if end < start or os.fstat(self._fd).st_size < end:
            raise InvalidArgumentError(
                f"the producer of part {index + 1} left {self._name} at byte {end} and {os.fstat(self._fd).st_size} "
                f"bytes long, which is no stream written from byte {start}"
            )
        self._file.seek(end)  # the file object learns where the stream ended
        size = end - start
        header = RECORD.pack(STREAM, size)
        if os.pwrite(self._fd, header, header_at) != len(header):
            raise OSError(f"{self._name}: a short write at byte {header_at}")
        self._structure.update(header)
        self._offset = end
        digest = self._digest(index, start, size, ahead)
        end_record = {"index": index, "size": size, "chunk_size": CHUNK_SIZE, "algorithm": CHUNK_ALGORITHM}
        self._record(PART_END, _encode({**end_record, "digest": digest}, "part end"))
        return PartSummary(index, json.loads(begin)["info"], size, digest, start)  # info as readers see it

    def add_part_from(self, info: Mapping[str, Any], read: Callable[[int], bytes]) -> PartSummary:
        """Append a part whose stream comes from ``read(n)`` (some bytes, ``b""`` at its end,
        like ``os.read`` on a pipe), copied into the file; then as ``add_part``."""

        def produce(fd: int) -> None:
            while data := read(CHUNK_SIZE):
                view = memoryview(data)
                while view:  # a write may be short
                    view = view[os.write(fd, view) :]

        return self.add_part(info, produce)

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
            "structure_sha256": self._structure.hexdigest(),
        }
        self._record(TRAILER, _encode(trailer, "trailer"), hashed=False)
        self._write(FOOTER.pack(trailer_offset, END_MAGIC), hashed=False)
        self._file.flush()
        if os.fstat(self._fd).st_size > self._offset:  # an older, longer file; or a producer wrote past its end
            os.ftruncate(self._fd, self._offset)
        self._release()
        self._info = BundleInfo(
            FORMAT_VERSION, self._metadata, tuple(self._parts), total, self._offset, self._structure.hexdigest()
        )
        return self._info

    def _check_open(self) -> None:
        if self._info is not None:
            raise InvalidArgumentError("the bundle writer is closed")
        if self._broken:
            raise InvalidArgumentError("a part failed half-way; this bundle is incomplete and must be discarded")

    def _release(self) -> None:
        if self._source is not None:
            self._source.close()

    def _digest(self, index: int, start: int, size: int, ahead: DigestAhead) -> str:
        """Write the part's chunk digests record: those ``ahead`` made while the stream was
        written, then the rest, reading the stream back. Returns its md5 (hex)."""
        head = RECORD.pack(CHUNK_DIGESTS, chunk_count(size) * CHUNK_DIGEST_SIZE)
        check, digest = hashlib.sha256(head), hashlib.md5(usedforsecurity=False)
        self._write(head)

        def take(digests: bytes, length: int) -> None:
            self._write(digests)
            check.update(digests)
            digest.update(digests)
            self._done += length
            if self._progress is not None:
                self._progress(self._done, self._total)

        done = ahead.done if 0 < ahead.done <= size else 0
        if done:
            take(bytes(ahead.digests), done)
        try:
            with closing(stream_digests(self._read_fd, start + done, size - done)) as windows:
                for _, length, digests in windows:
                    take(digests, length)
        except ShortRead as short:
            raise BundleTruncatedError(
                f"{self._name} was cut short at byte {short.at} while part {index + 1} was being written"
            ) from None
        self._write(check.digest())
        return digest.hexdigest()

    def _record(self, rtype: bytes, payload: bytes, *, hashed: bool = True) -> None:
        head = RECORD.pack(rtype, len(payload))
        check = hashlib.sha256(head)
        check.update(payload)
        self._write(head, hashed=hashed)
        self._write(payload, hashed=hashed)
        self._write(check.digest(), hashed=hashed)

    def _write(self, data: bytes, *, hashed: bool = True) -> None:
        view = memoryview(data)
        while view:  # a raw (unbuffered) file may write less than asked
            view = view[self._file.write(view) :]
        if hashed:
            self._structure.update(data)
        self._offset += len(data)


def _writable_fd(fileobj: BinaryIO) -> int:
    """The descriptor of ``fileobj``, once it is known to be a regular file at its start."""
    try:
        fd = fileobj.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        fd = -1
    if fd < 0 or not stat.S_ISREG(os.fstat(fd).st_mode):
        raise InvalidArgumentError(
            f"a bundle is written into a regular file (ZFS writes the streams straight into it), "
            f"not into {type(fileobj).__name__}"
        )
    if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND:
        raise InvalidArgumentError("a bundle cannot be written into a file opened for appending")
    if fileobj.tell() != 0:
        raise InvalidArgumentError(f"a bundle is written from the start of its file, not from byte {fileobj.tell()}")
    return fd


def _readable_twin(fileobj: BinaryIO, fd: int) -> io.FileIO | None:
    """None if ``fd`` can be read; else a second, read-only file on the same file."""
    if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR:
        return None
    names: list[Any] = [f"/proc/self/fd/{fd}", getattr(fileobj, "name", None)]
    for name in names:
        if not isinstance(name, str | bytes | os.PathLike):
            continue
        try:
            twin = open(name, "rb", buffering=0)  # noqa: SIM115 (the writer closes it)
        except OSError:
            continue
        if os.path.samestat(os.fstat(twin.fileno()), os.fstat(fd)):
            return twin
        twin.close()
    raise InvalidArgumentError("the bundle writer cannot read back the file it writes to digest it; open it with 'w+b'")


def _encode(value: Mapping[str, Any], what: str) -> bytes:
    try:
        data = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"bundle {what} is not JSON-serialisable: {exc}") from None
    if len(data) > MAX_JSON_SIZE:
        raise InvalidArgumentError(f"bundle {what} takes {len(data)} bytes as JSON, more than {MAX_JSON_SIZE}")
    return data
