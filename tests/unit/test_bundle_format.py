"""The bundle file format: round trips, and every kind of damage reported precisely."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import mmap
import os
import random
import resource
import struct
import subprocess
import sys
import tempfile
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Self, cast

import pytest

from dsg_storage import (
    BundleCorruptError,
    BundleError,
    BundleTruncatedError,
    BundleVersionError,
    DsgStorageError,
    InvalidArgumentError,
    NotABundleError,
)
from dsg_storage.transfer import digests, layout, reader
from dsg_storage.transfer.writer import BundleWriter
from tests.craft import records

MiB = 1 << 20
METADATA = {"repository": "tank/data/survey", "snapshots": ["dsg-commit-1", "dsg-commit-2"]}


def producer(data: bytes, piece: int = 300_000) -> Callable[[int], None]:
    """Writes ``data`` into the descriptor with os.write, in pieces, as lzc_send writes a stream."""

    def produce(fd: int) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view[:piece]) :]

    return produce


def void(_: object) -> None:
    """For a lambda that must return None."""


def build(parts: list[bytes], metadata: dict[str, Any] | None = None, **kwargs: Any) -> bytes:
    with tempfile.TemporaryFile() as f:  # "w+b"
        with BundleWriter(f, METADATA if metadata is None else metadata, **kwargs) as writer:
            for index, data in enumerate(parts):
                writer.add_part({"snapshot": f"s{index}"}, producer(data))
        f.seek(0)
        return f.read()


def streams(raw: bytes) -> list[tuple[int, int]]:
    """(offset, size) of every part's raw stream."""
    return [(start + 9, length) for rtype, start, length in records(raw) if rtype == b"S"]


def replaced(raw: bytes, offset: int, data: bytes) -> bytes:
    return raw[:offset] + data + raw[offset + len(data) :]


def flipped(raw: bytes, offset: int, mask: int = 0x01) -> bytes:
    return replaced(raw, offset, bytes([raw[offset] ^ mask]))


def rewrite_record(raw: bytes, start: int, payload: bytes) -> bytes:
    """The record at ``start`` with a new payload and a valid checksum (as a forger would)."""
    rtype, length = struct.unpack(">cQ", raw[start : start + 9])
    head = struct.pack(">cQ", rtype, len(payload))
    record = head + payload + hashlib.sha256(head + payload).digest()
    return raw[:start] + record + raw[start + 9 + length + 32 :]


def write(path: Path, raw: bytes) -> Path:
    path.write_bytes(raw)
    return path


def read_all(path: Path) -> list[bytes]:
    """Every part's stream, joined, through iter_parts."""
    return [b"".join(chunks) for _, chunks in reader.iter_parts(path)]


def read_ranges(path: Path) -> list[bytes]:
    """Every part's stream as a receiver reads it: seek the descriptor, read ``size`` bytes."""
    out = []
    with open(path, "rb") as f:
        for part in reader.part_ranges(path):
            os.lseek(f.fileno(), part.offset, os.SEEK_SET)
            data = b""
            while len(data) < part.size:
                data += os.read(f.fileno(), part.size - len(data))
            out.append(data)
    return out


TINY = build([b"abc", b""])
RNG = random.Random(1)
BIG_PARTS = [RNG.randbytes(2 * MiB + 100), b"x" * 10]
BIG = build(BIG_PARTS)


def sampled_offsets(raw: bytes) -> list[int]:
    """Bytes in every region: each record's type, length, payload and checksum, each
    stream's ends and middle, the header and the footer, and some at random."""
    offsets = set(range(12)) | set(range(len(raw) - 16, len(raw)))
    for rtype, start, length in records(raw):
        payload, digest = start + 9, start + 9 + length
        offsets |= {start, start + 1, start + 8, payload, payload + length // 2, digest - 1}
        if rtype != b"S":
            offsets |= {digest, digest + 31}
    offsets |= set(random.Random(2).sample(range(len(raw)), 30))
    return sorted(o for o in offsets if o < len(raw))


# ---------------------------------------------------------------------------- round trips
def test_round_trip(tmp_path: Path) -> None:
    # Several chunks; none; a few bytes; exactly one chunk; several windows (the threaded path).
    parts = [os.urandom(5 * MiB), b"", b"small", os.urandom(MiB), os.urandom(2 * digests.WINDOW_SIZE + MiB + 3)]
    path = write(tmp_path / "b.dsgb", build(parts))
    info = reader.verify(path)
    assert info == reader.inspect(path)
    assert info.format_version == layout.FORMAT_VERSION and info.metadata == METADATA
    assert [p.size for p in info.parts] == [len(p) for p in parts]
    assert [p.info for p in info.parts] == [{"snapshot": f"s{i}"} for i in range(len(parts))]
    assert info.total_size == sum(map(len, parts)) and info.file_size == path.stat().st_size
    assert [p.offset for p in info.parts] == [offset for offset, _ in streams(path.read_bytes())]
    assert read_all(path) == parts
    assert read_ranges(path) == parts
    assert reader.part_ranges(path, expect=info) == list(info.parts)


def test_the_layout_byte_by_byte(tmp_path: Path) -> None:
    """The format as documented, checked independently of the reader."""
    data = os.urandom(MiB + 5)
    raw = build([data])
    assert raw[:12] == b"DSGBUNDL" + struct.pack(">I", 1)
    kinds = [rtype for rtype, _, _ in records(raw)]
    assert kinds == [b"M", b"B", b"S", b"D", b"E", b"T"]
    (_, m, ml), (_, b, bl), (_, s, size), (_, d, dl), (_, e, el), (_, t, tl) = records(raw)
    for start, length in ((m, ml), (b, bl), (d, dl), (e, el), (t, tl)):
        record = raw[start : start + 9 + length]
        assert raw[start + 9 + length : start + 9 + length + 32] == hashlib.sha256(record).digest()
    assert json.loads(raw[m + 9 : m + 9 + ml]) == METADATA
    assert json.loads(raw[b + 9 : b + 9 + bl]) == {"index": 0, "info": {"snapshot": "s0"}}
    assert size == len(data) and raw[s + 9 : s + 9 + size] == data  # raw and contiguous
    chunk_digests = b"".join(hashlib.md5(data[i : i + MiB]).digest() for i in range(0, len(data), MiB))
    assert raw[d + 9 : d + 9 + dl] == chunk_digests and d == s + 9 + size
    end = json.loads(raw[e + 9 : e + 9 + el])
    digest = hashlib.md5(chunk_digests).hexdigest()
    assert end == {"index": 0, "size": size, "chunk_size": MiB, "algorithm": "md5", "digest": digest}
    structure = hashlib.sha256(raw[: s + 9] + raw[s + 9 + size : t]).hexdigest()
    assert json.loads(raw[t + 9 : t + 9 + tl]) == {
        "part_count": 1,
        "parts": [{"index": 0, "info": {"snapshot": "s0"}, "size": size, "digest": digest, "offset": s + 9}],
        "total_size": size,
        "structure_sha256": structure,
    }
    assert raw[-16:] == struct.pack(">Q", t) + b"DSGB-END" and t + 9 + tl + 32 == len(raw) - 16


def test_writer_returns_what_readers_see(tmp_path: Path) -> None:
    path = tmp_path / "b.dsgb"
    with open(path, "wb") as f:  # write-only: the writer reads the streams back through a second descriptor
        writer = BundleWriter(f, {"a": (1, 2)})
        first = writer.add_part({"n": 1}, producer(b"hello"))
        assert (first.index, first.size, first.info) == (0, 5, {"n": 1})
        info = writer.close()
        assert writer.close() is info  # idempotent
    assert path.read_bytes()[first.offset : first.offset + 5] == b"hello"
    assert info.metadata == {"a": [1, 2]}  # as readers see it
    assert reader.verify(path) == info and info.parts == (first,)


@pytest.mark.parametrize("mode", ["wb", "w+b", "unbuffered"])
def test_every_way_of_opening_the_file(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "b.dsgb"
    data = os.urandom(digests.WINDOW_SIZE + 7)
    f = cast(BinaryIO, open(path, "wb", buffering=0) if mode == "unbuffered" else open(path, mode))  # noqa: SIM115
    with f, BundleWriter(f, METADATA) as writer:
        writer.add_part({"p": 1}, producer(data))
        writer.add_part_from({"p": 2}, io.BytesIO(data).read)
    assert read_ranges(path) == [data, data]
    reader.verify(path)


def test_an_older_longer_file_is_cut_to_the_bundle(tmp_path: Path) -> None:
    path = write(tmp_path / "b.dsgb", os.urandom(3 * MiB))
    with open(path, "r+b") as f, BundleWriter(f, {}) as writer:
        writer.add_part({}, producer(b"abc"))
    assert reader.verify(path).file_size == path.stat().st_size < MiB


def test_no_parts_and_empty_metadata(tmp_path: Path) -> None:
    path = write(tmp_path / "b.dsgb", build([], {}))
    assert reader.verify(path).parts == () and read_all(path) == [] and reader.part_ranges(path) == []


def test_add_part_from_gathers_short_reads_and_long_ones(tmp_path: Path) -> None:
    data = os.urandom(2 * MiB + 7)
    source = io.BytesIO(data)
    blobs = iter([os.urandom(3 * MiB), b""])  # more than asked
    path = tmp_path / "b.dsgb"
    with open(path, "wb") as f, BundleWriter(f, {}) as writer:
        writer.add_part_from({}, lambda n: source.read(min(n, 1000)))
        big = writer.add_part_from({}, lambda n: next(blobs))
    assert big.size == 3 * MiB and read_ranges(path)[0] == data
    assert [length for _, length in streams(path.read_bytes())] == [len(data), 3 * MiB]
    reader.verify(path)


def test_streams_from_a_pipe(tmp_path: Path) -> None:
    data = os.urandom(3 * MiB + 1)
    rfd, wfd = os.pipe()

    def feed() -> None:
        with os.fdopen(wfd, "wb") as w:
            w.write(data)

    thread = threading.Thread(target=feed)
    thread.start()
    try:
        with open(tmp_path / "b.dsgb", "wb") as f, BundleWriter(f, {}) as writer:
            summary = writer.add_part_from({}, lambda n: os.read(rfd, n))
    finally:
        thread.join()
        os.close(rfd)
    assert summary.size == len(data) and read_all(tmp_path / "b.dsgb") == [data]


def test_writer_refuses_bad_metadata_before_writing(tmp_path: Path) -> None:
    with open(tmp_path / "b.dsgb", "wb") as f:
        with pytest.raises(InvalidArgumentError, match="not JSON-serialisable"):
            BundleWriter(f, {"when": object()})
        with pytest.raises(InvalidArgumentError, match="must be a mapping"):
            BundleWriter(f, [])  # type: ignore[arg-type]
    assert (tmp_path / "b.dsgb").stat().st_size == 0


def test_writer_refuses_what_is_not_a_regular_file_at_its_start(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="regular file"):
        BundleWriter(io.BytesIO(), {})
    rfd, wfd = os.pipe()
    with os.fdopen(rfd, "rb"), os.fdopen(wfd, "wb") as w, pytest.raises(InvalidArgumentError, match="regular file"):
        BundleWriter(w, {})
    with open(tmp_path / "a.dsgb", "ab") as f, pytest.raises(InvalidArgumentError, match="appending"):
        BundleWriter(f, {})
    with open(tmp_path / "b.dsgb", "wb") as f:
        f.write(b"x")
        with pytest.raises(InvalidArgumentError, match="from the start of its file, not from byte 1"):
            BundleWriter(f, {})


def test_writer_refuses_use_after_close_and_after_a_failed_part(tmp_path: Path) -> None:
    with tempfile.TemporaryFile() as temporary:
        writer = BundleWriter(temporary, {})
        writer.close()
        with pytest.raises(InvalidArgumentError, match="closed"):
            writer.add_part({}, producer(b""))

    def failing(fd: int) -> None:
        os.write(fd, b"half a stream")
        raise OSError("send died")

    path = tmp_path / "b.dsgb"
    with open(path, "wb") as f:
        writer = BundleWriter(f, {})
        with pytest.raises(OSError, match="send died"):
            writer.add_part({}, failing)
        with pytest.raises(InvalidArgumentError, match="incomplete"):
            writer.add_part({}, producer(b""))
        with pytest.raises(InvalidArgumentError, match="incomplete"):
            writer.close()
    # The stream's length was never filled in (2**64 - 1): truncated, inside the part.
    for read in (reader.inspect, reader.verify, read_all, reader.part_ranges):
        with pytest.raises(BundleTruncatedError, match="inside part 1"):
            read(path)


def test_a_producer_that_moves_the_offset_back_is_refused(tmp_path: Path) -> None:
    with open(tmp_path / "b.dsgb", "wb") as f:
        writer = BundleWriter(f, {})
        with pytest.raises(InvalidArgumentError, match="producer of part 1 left"):
            writer.add_part({}, lambda fd: void(os.lseek(fd, 0, os.SEEK_SET)))
    with open(tmp_path / "c.dsgb", "wb") as f:  # past the end without writing
        writer = BundleWriter(f, {})
        with pytest.raises(InvalidArgumentError, match="producer of part 1 left"):
            writer.add_part({}, lambda fd: void(os.lseek(fd, MiB, os.SEEK_CUR)))


def test_an_exception_in_the_with_block_leaves_no_footer(tmp_path: Path) -> None:
    path = tmp_path / "b.dsgb"
    with pytest.raises(RuntimeError), open(path, "wb") as f, BundleWriter(f, {}) as writer:
        writer.add_part({}, producer(b"abc"))
        raise RuntimeError("stop")
    with pytest.raises(BundleTruncatedError, match="ends at byte"):
        reader.verify(path)


def test_digesting_works_on_a_file_that_cannot_be_mapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def unmappable(*args: Any, **kwargs: Any) -> Any:
        raise OSError(19, "No such device")

    monkeypatch.setattr(mmap, "mmap", unmappable)
    data = os.urandom(digests.WINDOW_SIZE + 2 * MiB + 1)
    path = write(tmp_path / "b.dsgb", build([data]))
    assert reader.verify(path).total_size == len(data)
    offset, _ = streams(path.read_bytes())[0]
    write(path, flipped(path.read_bytes(), offset + digests.WINDOW_SIZE + MiB))
    with pytest.raises(BundleCorruptError, match="chunk 10 of part 1"):
        reader.verify(path)


def test_a_file_shorter_than_the_window_is_never_mapped_past_its_end(tmp_path: Path) -> None:
    with open(write(tmp_path / "short", os.urandom(MiB)), "rb") as f:
        for digesting in (digests.window_digests, digests.read_digests):
            with pytest.raises(digests.ShortRead) as caught:
                digesting(f.fileno(), 0, 2 * MiB)
            assert caught.value.at == MiB


# ---------------------------------------------------------------------------- inspect, part_ranges
class CountingFile:
    """A file that counts the bytes read through it."""

    def __init__(self, f: Any, counter: list[int]) -> None:
        self._f, self._counter = f, counter

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._counter[0] += len(data)
        return bytes(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


def counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the bytes the module reads (through the file it opens, and by pread); fail if
    it reads any stream byte."""
    counter = [0]
    opened = reader.open_checked
    monkeypatch.setattr(reader, "open_checked", lambda *a, **k: CountingFile(opened(*a, **k), counter))
    pread = os.pread

    def counted_pread(fd: int, n: int, offset: int) -> bytes:
        data = pread(fd, n, offset)
        counter[0] += len(data)
        return data

    monkeypatch.setattr(os, "pread", counted_pread)

    def no_streams(*args: Any) -> Any:
        raise AssertionError("a stream was read")

    monkeypatch.setattr(reader, "stream_digests", no_streams)
    monkeypatch.setattr(reader._Streamer, "chunks", no_streams)
    return counter


def test_inspect_reads_only_the_ends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = build([os.urandom(5 * MiB), os.urandom(100)])
    path = write(tmp_path / "b.dsgb", raw)
    damaged = write(tmp_path / "d.dsgb", flipped(raw, streams(raw)[0][0] + 100))
    counter = counting(monkeypatch)
    info = reader.inspect(path)
    assert [p.size for p in info.parts] == [5 * MiB, 100] and info.metadata == METADATA
    assert 0 < counter[0] < 4096  # the ends were read (and counted), no more
    # A damaged stream goes unseen by inspect (it reads none); verify finds it.
    assert reader.inspect(damaged) == info
    monkeypatch.undo()
    with pytest.raises(BundleCorruptError, match="chunk 1 of part 1"):
        reader.verify(damaged)


def test_part_ranges_reads_the_records_but_no_stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = build([os.urandom(5 * MiB), b"", os.urandom(100)])
    path = write(tmp_path / "b.dsgb", raw)
    info = reader.verify(path)
    counter = counting(monkeypatch)
    parts = reader.part_ranges(path, expect=info)
    assert parts == list(info.parts) and [(p.offset, p.size) for p in parts] == streams(raw)
    assert 0 < counter[0] < 8192  # the records, with 16 bytes of digest per chunk


def test_part_ranges_and_iter_parts_refuse_a_bundle_that_changed(tmp_path: Path) -> None:
    path = write(tmp_path / "b.dsgb", BIG)
    info = reader.verify(path)
    write(path, build([b"other"]))
    with pytest.raises(BundleError, match="changed since it was verified"):
        reader.part_ranges(path, expect=info)
    with pytest.raises(BundleError, match="changed since it was verified"):
        next(reader.iter_parts(path, expect=info))
    # The same parts elsewhere in the file (other metadata) are another bundle too.
    write(path, build(BIG_PARTS, {"repository": "tank/data/other-name"}))
    with pytest.raises(BundleError, match="changed since it was verified"):
        reader.part_ranges(path, expect=info)


# ---------------------------------------------------------------------------- damage
def expected_for(offset: int) -> tuple[type[BundleError], ...]:
    if offset < 8:
        return (NotABundleError,)
    if offset < 12:  # the version: a higher one reads as newer, 0 as impossible
        return (BundleVersionError, BundleCorruptError)
    return (BundleCorruptError,)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory for the many small cases (a tmp_path each would double their time)."""
    return tmp_path_factory.mktemp("bundles")


def test_a_flipped_byte_anywhere_in_a_small_bundle(scratch: Path) -> None:
    """Every byte, two ways; one test (a parametrized case per byte costs more than the check)."""
    for offset in range(len(TINY)):
        for mask in (0x01, 0xFF):
            path = write(scratch / "flip.dsgb", flipped(TINY, offset, mask))
            for read in (reader.verify, read_all):
                with pytest.raises(BundleError) as caught:
                    read(path)
                assert type(caught.value) in expected_for(offset), (offset, mask, read, caught.value)


@pytest.mark.parametrize("offset", sampled_offsets(BIG))
def test_a_flipped_byte_in_every_region_of_a_bigger_bundle(tmp_path: Path, offset: int) -> None:
    path = write(tmp_path / "b.dsgb", flipped(BIG, offset))
    with pytest.raises(BundleError) as caught:
        reader.verify(path)
    assert type(caught.value) in expected_for(offset)
    assert str(path) in str(caught.value)


def test_damage_messages_say_where(tmp_path: Path) -> None:
    # The stream ends in a byte that is no record type: read one byte short, it must say so.
    raw = build([b"small", os.urandom(3 * MiB + 4) + b"\0"])
    offset = streams(raw)[1][0]
    path = write(tmp_path / "b.dsgb", flipped(raw, offset + 2 * MiB + 500))
    first, last = offset + 2 * MiB, offset + 3 * MiB - 1
    message = rf"b\.dsgb is damaged: chunk 3 of part 2 \(bytes {first}-{last}\) does not match its digest; "
    for read in (reader.verify, read_all):
        with pytest.raises(BundleCorruptError, match=message):
            read(path)
    path = write(tmp_path / "b.dsgb", flipped(raw, offset + 3 * MiB + 4))  # the last, short chunk
    with pytest.raises(BundleCorruptError, match=rf"chunk 4 of part 2 \(bytes {last + 1}-{last + 5}\)"):
        reader.verify(path)
    kinds = {rtype: start for rtype, start, _ in records(raw)}  # the last of each kind
    cases = [
        (kinds[b"S"] + 1, rf"the stream header at byte {kinds[b'S']} claims {2**56 + 3 * MiB + 5} bytes, running past"),
        (kinds[b"S"] + 8, rf"byte {kinds[b'S'] + 9 + 3 * MiB + 4} holds an unknown record type"),  # 1 byte short
        (kinds[b"D"] + 20, rf"checksum mismatch in the chunk digests record at byte {kinds[b'D']}, in part 2"),
        (kinds[b"E"] + 20, rf"checksum mismatch in the part end record at byte {kinds[b'E']}, in part 2"),
        (kinds[b"D"], rf"byte {kinds[b'D']} holds a part end record where the chunk digests of part 2 should be"),
        (kinds[b"T"] + 20, "checksum mismatch in the trailer record"),
        (len(raw) - 3, "the footer at byte .* lacks its end marker"),
        (len(raw) - 9, "the footer points at byte"),
    ]
    for damaged, message in cases:
        path = write(tmp_path / "b.dsgb", flipped(raw, damaged))
        with pytest.raises(BundleCorruptError, match=message):
            reader.verify(path)
    path = write(tmp_path / "b.dsgb", flipped(raw, kinds[b"T"] + 20))
    with pytest.raises(BundleCorruptError, match="trailer"):
        reader.inspect(path)


def test_the_structure_hash_covers_records_rewritten_with_a_valid_checksum(tmp_path: Path) -> None:
    """A record replaced whole, checksum and all, is caught by the trailer's structure hash
    (inspect, which reads the ends only, does not see it)."""
    metadata_at = records(BIG)[0][1]
    # Metadata of the same length, so that every offset (the trailer lists them) stays right.
    same = json.dumps(dict(METADATA, repository="tank/data/SURVEY"), sort_keys=True, separators=(",", ":"))
    path = write(tmp_path / "b.dsgb", rewrite_record(BIG, metadata_at, same.encode()))
    assert reader.inspect(path).metadata["repository"] == "tank/data/SURVEY"
    for read in (reader.verify, read_all, reader.part_ranges):
        with pytest.raises(BundleCorruptError, match="structure"):
            read(path)


def test_chunks_out_of_order_are_caught(tmp_path: Path) -> None:
    offset, _ = streams(BIG)[0]
    first, second = BIG[offset : offset + MiB], BIG[offset + MiB : offset + 2 * MiB]
    swapped = replaced(BIG, offset, second + first)  # the stream bytes alone
    path = write(tmp_path / "b.dsgb", swapped)
    with pytest.raises(BundleCorruptError, match="chunk 1 of part 1"):
        reader.verify(path)
    # The digests swapped too, their record's checksum made valid: the part's digest differs.
    digests_at = next(start for rtype, start, _ in records(BIG) if rtype == b"D")
    digests = BIG[digests_at + 9 : digests_at + 9 + 48]
    swapped = rewrite_record(swapped, digests_at, digests[16:32] + digests[:16] + digests[32:])
    path = write(tmp_path / "b.dsgb", swapped)
    received, error = consume(path)
    assert isinstance(error, BundleCorruptError) and "do not match the digest in the part end record" in str(error)
    assert received == []  # found before any chunk went out


def test_a_chunk_size_or_algorithm_this_version_does_not_know(tmp_path: Path) -> None:
    end_at = next(start for rtype, start, _ in records(BIG) if rtype == b"E")
    _, length = struct.unpack(">cQ", BIG[end_at : end_at + 9])
    end = json.loads(BIG[end_at + 9 : end_at + 9 + length])
    for change in ({"algorithm": "sha256"}, {"chunk_size": 4096}):
        path = write(tmp_path / "b.dsgb", rewrite_record(BIG, end_at, json.dumps({**end, **change}).encode()))
        with pytest.raises(BundleCorruptError, match="format 1 has 1048576 and 'md5'"):
            reader.verify(path)


def test_a_damaged_length_is_refused_before_allocating(tmp_path: Path) -> None:
    huge = struct.pack(">Q", 2**63)
    for rtype, start, _ in records(BIG)[:3]:  # the metadata, the first part's begin, its stream header
        assert rtype in b"MBS"
        raw = replaced(BIG, start + 1, huge)
        tracemalloc.start()
        try:
            with pytest.raises(BundleCorruptError, match="claims 9223372036854775808 bytes"):
                reader.verify(write(tmp_path / "b.dsgb", raw))
            assert tracemalloc.get_traced_memory()[1] < MiB
        finally:
            tracemalloc.stop()
    digests_at = next(start for rtype, start, _ in records(BIG) if rtype == b"D")
    with pytest.raises(BundleCorruptError, match="claims 9223372036854775808 bytes, but a stream of"):
        reader.verify(write(tmp_path / "b.dsgb", replaced(BIG, digests_at + 1, huge)))
    end_at = next(start for rtype, start, _ in records(BIG) if rtype == b"E")
    with pytest.raises(BundleCorruptError, match="more than its limit"):
        reader.verify(
            write(tmp_path / "b.dsgb", replaced(BIG, end_at + 1, struct.pack(">Q", layout.MAX_JSON_SIZE + 1)))
        )
    # Without the footer, a stream running past the end means a truncated file.
    stream_at = records(BIG)[2][1]
    with pytest.raises(BundleTruncatedError, match="inside part 1"):
        reader.verify(write(tmp_path / "b.dsgb", replaced(BIG, stream_at + 1, huge)[:-1]))


def test_bytes_after_the_footer(tmp_path: Path) -> None:
    with pytest.raises(BundleCorruptError, match="3 unexpected bytes follow the footer"):
        reader.verify(write(tmp_path / "b.dsgb", BIG + b"abc"))


def test_truncation_at_every_length_of_a_small_bundle(scratch: Path) -> None:
    for length in range(len(TINY)):
        path = write(scratch / "cut.dsgb", TINY[:length])
        expected = NotABundleError if length < 8 else BundleTruncatedError
        for read in (reader.inspect, reader.verify, read_all, reader.part_ranges):
            with pytest.raises(BundleError) as caught:
                read(path)
            assert type(caught.value) is expected, (length, read)


@pytest.mark.parametrize(
    "length", sorted({12, 100, MiB, MiB + 50, 2 * MiB, len(BIG) - 17, len(BIG) - 16, len(BIG) - 1})
)
def test_truncation_of_a_bigger_bundle(tmp_path: Path, length: int) -> None:
    path = write(tmp_path / "b.dsgb", BIG[:length])
    with pytest.raises(BundleTruncatedError, match=rf"b\.dsgb is truncated: it ends at byte {length}, inside "):
        reader.verify(path)
    with pytest.raises(BundleTruncatedError):
        reader.inspect(path)


def test_truncation_inside_a_part_names_the_part(tmp_path: Path) -> None:
    path = write(tmp_path / "b.dsgb", BIG[: MiB + 50])
    with pytest.raises(BundleTruncatedError, match=rf"ends at byte {MiB + 50}, inside part 1 \(expected more data\)"):
        reader.inspect(path)


def test_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "b.dsgb", TINY[:8] + struct.pack(">I", 2) + TINY[12:])
    for read in (reader.inspect, reader.verify, read_all, reader.part_ranges):
        with pytest.raises(BundleVersionError, match="version 2, made by a newer dsg-storage; this one reads format 1"):
            read(path)


@pytest.mark.parametrize(
    "content",
    [b"", b"DSG", random.Random(5).randbytes(5000), b"DSGBUNDX" + TINY[8:], b'{"format": "dsg-storage-lock"}\n'],
    ids=["empty", "short", "random", "other-magic", "json"],
)
def test_a_file_that_is_not_a_bundle(tmp_path: Path, content: bytes) -> None:
    path = write(tmp_path / "b.dsgb", content)
    for read in (reader.inspect, reader.verify, read_all, reader.part_ranges):
        with pytest.raises(NotABundleError, match="is not a dsg-storage bundle"):
            read(path)


def test_bundle_errors_are_the_builtins_they_mean() -> None:
    err = BundleTruncatedError("b is truncated", hint="copy it again")
    assert isinstance(err, EOFError) and isinstance(err, ValueError) and isinstance(err, DsgStorageError)
    assert str(err) == "b is truncated; copy it again"
    assert all(issubclass(c, BundleError) for c in (NotABundleError, BundleVersionError, BundleCorruptError))


# ---------------------------------------------------------------------------- iter_parts
def consume(path: Path) -> tuple[list[bytes], BaseException | None]:
    """Chunks received before iter_parts raised, and what it raised."""
    received: list[bytes] = []
    try:
        for _, chunks in reader.iter_parts(path):
            for chunk in chunks:
                received.append(chunk)  # noqa: PERF402 (one at a time: keep those before an error)
    except BundleError as exc:
        return received, exc
    return received, None


def test_damage_in_the_last_chunk_stops_before_the_stream_is_whole(tmp_path: Path) -> None:
    offset, size = streams(BIG)[0]
    received, error = consume(write(tmp_path / "b.dsgb", flipped(BIG, offset + size - 20)))  # chunk 3, the last
    assert isinstance(error, BundleCorruptError) and "chunk 3 of part 1" in str(error)
    assert received == [BIG_PARTS[0][:MiB]]  # chunk 2 was held back until chunk 3 was checked


def test_iter_parts_checks_each_chunk_as_it_reads_it(tmp_path: Path) -> None:
    """The file may change after the records were checked: each chunk is checked on the way."""
    path = write(tmp_path / "b.dsgb", BIG)
    offset, _ = streams(BIG)[0]
    parts = reader.iter_parts(path)
    _, chunks = next(parts)
    assert next(chunks) == BIG_PARTS[0][:MiB]  # chunk 2 is read too, held back
    with open(path, "r+b") as f:
        os.pwrite(f.fileno(), b"\0", offset + 2 * MiB + 5)
    with pytest.raises(BundleCorruptError, match="chunk 3 of part 1"):
        next(chunks)


def test_skipping_a_part_still_checks_it(tmp_path: Path) -> None:
    offset, _ = streams(BIG)[0]
    parts = reader.iter_parts(write(tmp_path / "b.dsgb", flipped(BIG, offset + 9)))
    summary, _ = next(parts)
    assert summary.index == 0
    with pytest.raises(BundleCorruptError):
        next(parts)


def test_going_on_after_an_error_raises_again(tmp_path: Path) -> None:
    offset, _ = streams(BIG)[0]
    parts = reader.iter_parts(write(tmp_path / "b.dsgb", flipped(BIG, offset + 9)))
    _, chunks = next(parts)
    with pytest.raises(BundleCorruptError):
        list(chunks)
    with pytest.raises(BundleCorruptError):
        next(parts)


def test_iter_parts_yields_the_trailer_summaries(tmp_path: Path) -> None:
    path = write(tmp_path / "b.dsgb", BIG)
    info = reader.inspect(path)
    seen = []
    for summary, chunks in reader.iter_parts(path, expect=info):
        seen.append(summary)
        assert b"".join(chunks) == BIG_PARTS[summary.index]
    assert tuple(seen) == info.parts


def test_damage_to_the_records_fails_before_the_first_chunk(tmp_path: Path) -> None:
    last_end = [start for rtype, start, _ in records(BIG) if rtype == b"E"][-1]
    received, error = consume(write(tmp_path / "b.dsgb", flipped(BIG, last_end + 20)))
    assert isinstance(error, BundleCorruptError) and "part 2" in str(error)
    assert received == []


# ---------------------------------------------------------------------------- progress, memory
def recorder() -> tuple[list[tuple[int, int | None]], Callable[[int, int | None], None]]:
    calls: list[tuple[int, int | None]] = []
    return calls, lambda done, total: calls.append((done, total))


def assert_progress(calls: list[tuple[int, int | None]], total: int, parts: int) -> None:
    dones = [done for done, _ in calls]
    assert dones == sorted(dones) and dones[-1] == total
    assert all(t == total for _, t in calls)
    assert len(calls) <= total // MiB + 2 * parts  # per chunk at most, not per byte


def test_progress_is_monotonic_and_ends_at_the_total(tmp_path: Path) -> None:
    parts = [*BIG_PARTS, os.urandom(2 * digests.WINDOW_SIZE + 1)]
    total = sum(map(len, parts))
    calls, progress = recorder()
    path = write(tmp_path / "b.dsgb", build(parts, progress=progress, total=total))
    assert_progress(calls, total, len(parts))
    calls, progress = recorder()
    reader.verify(path, progress=progress)
    assert_progress(calls, total, len(parts))
    assert len(calls) == 1 + 1 + 3  # per window
    calls, progress = recorder()
    for _, chunks in reader.iter_parts(path, progress=progress):
        for _ in chunks:
            pass
    assert_progress(calls, total, len(parts))


def test_memory_stays_flat_for_a_64_mib_bundle(tmp_path: Path) -> None:
    size, rng = 64 * MiB, random.Random(3)

    def produce(fd: int) -> None:
        for _ in range(size // MiB):
            os.write(fd, rng.randbytes(MiB))

    path = tmp_path / "big.dsgb"
    tracemalloc.start()
    try:
        with open(path, "wb") as f, BundleWriter(f, METADATA) as writer:
            writer.add_part({"snapshot": "big"}, produce)
        info = reader.verify(path)
        for _, chunks in reader.iter_parts(path):
            for _ in chunks:
                pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.total_size == size
    assert peak < 8 * MiB, f"peak {peak / MiB:.1f} MiB"


RSS_SCRIPT = """
import os, resource, sys
from dsg_storage.transfer import reader
from dsg_storage.transfer.writer import BundleWriter

path, size = sys.argv[1], int(sys.argv[2])

def sparse(fd):  # a stream of zeros, without writing them
    end = os.lseek(fd, 0, os.SEEK_CUR) + size
    os.ftruncate(fd, end)
    os.lseek(fd, end, os.SEEK_SET)

def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux

reader.verify  # imported
before = rss()
with open(path, "wb") as f, BundleWriter(f, {}) as writer:
    writer.add_part({}, sparse)
written = rss()
assert reader.verify(path).total_size == size
print(before, written, rss())
"""


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss in KiB, mapped file pages counted: Linux")
def test_resident_memory_stays_flat_for_a_256_mib_bundle(tmp_path: Path) -> None:
    """tracemalloc does not see mapped pages; the peak resident size does (in a fresh process)."""
    env = dict(os.environ, PYTHONPATH=str(Path(layout.__file__).parents[2]))
    result = subprocess.run(
        [sys.executable, "-c", RSS_SCRIPT, str(tmp_path / "big.dsgb"), str(256 * MiB)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    before, written, verified = map(int, result.stdout.split())
    assert written - before < 40 * 1024, f"writing grew the peak RSS by {(written - before) // 1024} MiB"
    assert verified - before < 40 * 1024, f"verifying grew the peak RSS by {(verified - before) // 1024} MiB"


def test_digests_made_while_the_stream_is_written_match_a_read_back(tmp_path: Path) -> None:
    """How much is digested ahead depends on timing; what is, must be exact."""
    data = os.urandom(3 * digests.WINDOW_SIZE + 12345)
    path = tmp_path / "ahead.bin"
    with open(path, "w+b") as handle:
        handle.write(b"H" * 100)
        handle.flush()
        ahead = digests.DigestAhead(handle.fileno(), 100)

        def produce(fd: int) -> None:
            for at in range(0, len(data), MiB):
                os.write(fd, data[at : at + MiB])

        ahead.run(produce, handle.fileno())
        assert ahead.done % digests.WINDOW_SIZE == 0 and ahead.done <= len(data)
        expected = b"".join(
            hashlib.md5(data[at : at + MiB], usedforsecurity=False).digest() for at in range(0, ahead.done, MiB)
        )
        assert bytes(ahead.digests) == expected


def test_a_failing_producer_is_reported_after_digesting_ahead(tmp_path: Path) -> None:
    with open(tmp_path / "f.bin", "w+b") as handle:
        ahead = digests.DigestAhead(handle.fileno(), 0)

        def produce(fd: int) -> None:
            os.write(fd, os.urandom(MiB))
            raise OSError(5, "the stream broke")

        with pytest.raises(OSError, match="the stream broke"):
            ahead.run(produce, handle.fileno())


@contextlib.contextmanager
def descriptors_taken_below(limit: int) -> Iterator[None]:
    """Every descriptor number below ``limit`` in use while inside, as in a process that
    holds many files open: whatever opens a file meanwhile gets a number of ``limit`` or
    more. Raises the soft RLIMIT_NOFILE for it (restored after); fails, never skips,
    when the hard limit does not allow it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = limit + 256  # room for what is opened inside
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.fail(f"RLIMIT_NOFILE's hard limit is {hard}; this test needs {wanted} descriptors")
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    taken: list[int] = []
    spare = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        while (fd := os.dup(spare)) < limit:
            taken.append(fd)
        os.close(fd)
        yield
    finally:
        for fd in (*taken, spare):
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_bundle_is_written_and_read_with_descriptors_of_1024_and_more(tmp_path: Path) -> None:
    """select() cannot wait on a descriptor of FD_SETSIZE (1024) or more; the writer's
    digesting ahead waits on its inotify and wake-up descriptors, whatever their number."""
    data = [os.urandom(digests.WINDOW_SIZE + 5000), b"tail"]
    with descriptors_taken_below(1500):
        probe = os.open(os.devnull, os.O_RDONLY)
        os.close(probe)
        assert probe >= 1500
        raw = build(data)
        path = write(tmp_path / "high.dsgb", raw)
        assert read_all(path) == data
        info = reader.verify(path)
    assert raw == build(data) and info.total_size == sum(map(len, data))
