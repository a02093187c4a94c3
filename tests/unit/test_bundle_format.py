"""The bundle file format: round trips, and every kind of damage reported precisely."""

from __future__ import annotations

import io
import os
import random
import struct
import threading
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

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
from dsg_storage import _bundle_format as bf

MiB = 1 << 20
METADATA = {"repository": "tank/data/survey", "snapshots": ["dsg-commit-1", "dsg-commit-2"]}


def build(parts: list[bytes], metadata: dict[str, Any] | None = None, **kwargs: Any) -> bytes:
    out = io.BytesIO()
    with bf.BundleWriter(out, METADATA if metadata is None else metadata, **kwargs) as writer:
        for index, data in enumerate(parts):
            writer.add_part({"snapshot": f"s{index}"}, io.BytesIO(data).read)
    return out.getvalue()


def records(raw: bytes) -> list[tuple[bytes, int, int]]:
    """(type, offset, payload length) of every record, read without the module's help."""
    found, offset = [], 12
    while offset < len(raw) - 16:
        rtype, length = struct.unpack(">cQ", raw[offset : offset + 9])
        found.append((rtype, offset, length))
        offset += 9 + length + 32
    return found


def flipped(raw: bytes, offset: int, mask: int = 0x01) -> bytes:
    return raw[:offset] + bytes([raw[offset] ^ mask]) + raw[offset + 1 :]


def write(path: Path, raw: bytes) -> Path:
    path.write_bytes(raw)
    return path


def read_all(path: Path) -> list[bytes]:
    """Every part's stream, joined, through iter_parts."""
    return [b"".join(chunks) for _, chunks in bf.iter_parts(path)]


TINY = build([b"abc", b""])
RNG = random.Random(1)
BIG_PARTS = [RNG.randbytes(2 * MiB + 100), b"x" * 10]
BIG = build(BIG_PARTS)


def sampled_offsets(raw: bytes) -> list[int]:
    """Bytes in every region: each record's type, length, payload and checksum, the header
    and the footer, and some at random."""
    offsets = set(range(12)) | set(range(len(raw) - 16, len(raw)))
    for _, start, length in records(raw):
        payload, digest = start + 9, start + 9 + length
        offsets |= {start, start + 1, start + 8, payload, payload + length // 2, digest, digest + 31}
    offsets |= set(random.Random(2).sample(range(len(raw)), 30))
    return sorted(o for o in offsets if o < len(raw))


# ---------------------------------------------------------------------------- round trips
def test_round_trip(tmp_path: Path) -> None:
    parts = [os.urandom(5 * MiB), b"", b"small", os.urandom(MiB)]  # 5 MiB: several chunks; exactly one chunk
    path = write(tmp_path / "b.dsgb", build(parts))
    info = bf.verify(path)
    assert info == bf.inspect(path)
    assert info.format_version == bf.FORMAT_VERSION and info.metadata == METADATA
    assert [p.size for p in info.parts] == [len(p) for p in parts]
    assert [p.info for p in info.parts] == [{"snapshot": f"s{i}"} for i in range(4)]
    assert info.total_size == sum(map(len, parts)) and info.file_size == path.stat().st_size
    assert read_all(path) == parts
    assert all(length <= bf.CHUNK_SIZE for rtype, _, length in records(path.read_bytes()) if rtype == b"C")


def test_writer_returns_what_readers_see(tmp_path: Path) -> None:
    out = io.BytesIO()
    writer = bf.BundleWriter(out, {"a": 1})
    first = writer.add_part({"n": 1}, io.BytesIO(b"hello").read)
    assert (first.index, first.size) == (0, 5)
    info = writer.close()
    assert writer.close() is info  # idempotent
    assert bf.verify(write(tmp_path / "b.dsgb", out.getvalue())) == info


def test_no_parts_and_empty_metadata(tmp_path: Path) -> None:
    path = write(tmp_path / "b.dsgb", build([], {}))
    assert bf.verify(path).parts == () and read_all(path) == []


def test_short_reads_are_gathered_into_full_chunks(tmp_path: Path) -> None:
    data = os.urandom(2 * MiB + 7)
    source = io.BytesIO(data)
    out = io.BytesIO()
    with bf.BundleWriter(out, {}) as writer:
        writer.add_part({}, lambda n: source.read(min(n, 1000)))
    lengths = [length for rtype, _, length in records(out.getvalue()) if rtype == b"C"]
    assert lengths == [MiB, MiB, 7]
    assert read_all(write(tmp_path / "b.dsgb", out.getvalue())) == [data]


def test_a_read_returning_more_than_asked_still_makes_bounded_chunks(tmp_path: Path) -> None:
    blobs = iter([os.urandom(3 * MiB), b""])
    out = io.BytesIO()
    with bf.BundleWriter(out, {}) as writer:
        writer.add_part({}, lambda n: next(blobs))
    assert [length for rtype, _, length in records(out.getvalue()) if rtype == b"C"] == [MiB] * 3
    bf.verify(write(tmp_path / "b.dsgb", out.getvalue()))


def test_streams_from_a_pipe(tmp_path: Path) -> None:
    data = os.urandom(3 * MiB + 1)
    rfd, wfd = os.pipe()

    def feed() -> None:
        with os.fdopen(wfd, "wb") as w:
            w.write(data)

    thread = threading.Thread(target=feed)
    thread.start()
    try:
        with open(tmp_path / "b.dsgb", "wb") as f, bf.BundleWriter(f, {}) as writer:
            summary = writer.add_part({}, lambda n: os.read(rfd, n))
    finally:
        thread.join()
        os.close(rfd)
    assert summary.size == len(data) and read_all(tmp_path / "b.dsgb") == [data]


def test_writer_refuses_bad_metadata_before_writing() -> None:
    out = io.BytesIO()
    with pytest.raises(InvalidArgumentError, match="not JSON-serialisable"):
        bf.BundleWriter(out, {"when": object()})
    assert out.getvalue() == b""


def test_writer_refuses_use_after_close_and_after_a_failed_part(tmp_path: Path) -> None:
    writer = bf.BundleWriter(io.BytesIO(), {})
    writer.close()
    with pytest.raises(InvalidArgumentError, match="closed"):
        writer.add_part({}, io.BytesIO(b"").read)

    def failing(n: int) -> bytes:
        raise OSError("send died")

    path = tmp_path / "b.dsgb"
    with open(path, "wb") as f:
        writer = bf.BundleWriter(f, {})
        with pytest.raises(OSError, match="send died"):
            writer.add_part({}, failing)
        with pytest.raises(InvalidArgumentError, match="incomplete"):
            writer.close()
    with pytest.raises(BundleTruncatedError):
        bf.verify(path)


def test_an_exception_in_the_with_block_leaves_no_footer(tmp_path: Path) -> None:
    path = tmp_path / "b.dsgb"
    with pytest.raises(RuntimeError), open(path, "wb") as f, bf.BundleWriter(f, {}) as writer:
        writer.add_part({}, io.BytesIO(b"abc").read)
        raise RuntimeError("stop")
    with pytest.raises(BundleTruncatedError, match="ends at byte"):
        bf.verify(path)


# ---------------------------------------------------------------------------- inspect
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


def test_inspect_reads_no_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = build([os.urandom(5 * MiB), os.urandom(100)])
    path = write(tmp_path / "b.dsgb", raw)
    counter = [0]
    opener = lambda *a, **k: CountingFile(open(*a, **k), counter)  # noqa: SIM115 (inspect closes it)
    monkeypatch.setattr(bf, "open", opener, raising=False)
    info = bf.inspect(path)
    assert [p.size for p in info.parts] == [5 * MiB, 100] and info.metadata == METADATA
    assert counter[0] < 4096
    # A damaged chunk goes unseen by inspect (it reads none); verify finds it.
    chunk = next(start for rtype, start, _ in records(raw) if rtype == b"C")
    damaged = write(tmp_path / "d.dsgb", flipped(raw, chunk + 100))
    assert bf.inspect(damaged) == bf.inspect(path)
    with pytest.raises(BundleCorruptError, match="checksum mismatch in the chunk record"):
        bf.verify(damaged)


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
            for read in (bf.verify, read_all):
                with pytest.raises(BundleError) as caught:
                    read(path)
                assert type(caught.value) in expected_for(offset), (offset, mask, read)


@pytest.mark.parametrize("offset", sampled_offsets(BIG))
def test_a_flipped_byte_in_every_region_of_a_bigger_bundle(tmp_path: Path, offset: int) -> None:
    path = write(tmp_path / "b.dsgb", flipped(BIG, offset))
    with pytest.raises(BundleError) as caught:
        bf.verify(path)
    assert type(caught.value) in expected_for(offset)
    assert str(path) in str(caught.value)


def test_damage_messages_say_where(tmp_path: Path) -> None:
    chunks = [start for rtype, start, _ in records(BIG) if rtype == b"C"]
    path = write(tmp_path / "b.dsgb", flipped(BIG, chunks[1] + 500))
    with pytest.raises(
        BundleCorruptError, match=rf"checksum mismatch in the chunk record at byte {chunks[1]}, in part 1"
    ):
        bf.verify(path)
    trailer = next(start for rtype, start, _ in records(BIG) if rtype == b"T")
    path = write(tmp_path / "b.dsgb", flipped(BIG, trailer + 20))
    with pytest.raises(BundleCorruptError, match="trailer"):
        bf.inspect(path)
    path = write(tmp_path / "b.dsgb", flipped(BIG, len(BIG) - 3))
    with pytest.raises(BundleCorruptError, match="footer"):
        bf.verify(path)


def test_a_damaged_length_is_refused_before_allocating(tmp_path: Path) -> None:
    for rtype, start, _ in records(BIG)[:2]:  # the metadata, then the first part's begin
        raw = BIG[: start + 1] + struct.pack(">Q", 2**63) + BIG[start + 9 :]
        tracemalloc.start()
        try:
            with pytest.raises(BundleCorruptError, match="claims 9223372036854775808 bytes"):
                bf.verify(write(tmp_path / "b.dsgb", raw))
            assert tracemalloc.get_traced_memory()[1] < MiB
        finally:
            tracemalloc.stop()
    chunk = next(start for rtype, start, _ in records(BIG) if rtype == b"C")
    raw = BIG[: chunk + 1] + struct.pack(">Q", MiB + 1) + BIG[chunk + 9 :]
    with pytest.raises(BundleCorruptError, match="more than its limit"):
        bf.verify(write(tmp_path / "b.dsgb", raw))


def test_bytes_after_the_footer(tmp_path: Path) -> None:
    with pytest.raises(BundleCorruptError, match="3 unexpected bytes follow the footer"):
        bf.verify(write(tmp_path / "b.dsgb", BIG + b"abc"))


def test_truncation_at_every_length_of_a_small_bundle(scratch: Path) -> None:
    for length in range(len(TINY)):
        path = write(scratch / "cut.dsgb", TINY[:length])
        expected = NotABundleError if length < 8 else BundleTruncatedError
        for read in (bf.inspect, bf.verify, read_all):
            with pytest.raises(BundleError) as caught:
                read(path)
            assert type(caught.value) is expected, (length, read)


@pytest.mark.parametrize(
    "length", sorted({12, 100, MiB, MiB + 50, 2 * MiB, len(BIG) - 17, len(BIG) - 16, len(BIG) - 1})
)
def test_truncation_of_a_bigger_bundle(tmp_path: Path, length: int) -> None:
    path = write(tmp_path / "b.dsgb", BIG[:length])
    with pytest.raises(BundleTruncatedError, match=rf"b\.dsgb is truncated: it ends at byte {length}, inside "):
        bf.verify(path)
    with pytest.raises(BundleTruncatedError):
        bf.inspect(path)


def test_truncation_inside_a_part_names_the_part(tmp_path: Path) -> None:
    path = write(tmp_path / "b.dsgb", BIG[: MiB + 50])
    with pytest.raises(BundleTruncatedError, match=rf"ends at byte {MiB + 50}, inside part 1 \(expected more data\)"):
        bf.inspect(path)


def test_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "b.dsgb", TINY[:8] + struct.pack(">I", 2) + TINY[12:])
    for read in (bf.inspect, bf.verify, read_all):
        with pytest.raises(BundleVersionError, match="version 2, made by a newer dsg-storage; this one reads format 1"):
            read(path)


@pytest.mark.parametrize(
    "content",
    [b"", b"DSG", random.Random(5).randbytes(5000), b"DSGBUNDX" + TINY[8:], b'{"format": "dsg-storage-lock"}\n'],
    ids=["empty", "short", "random", "other-magic", "json"],
)
def test_a_file_that_is_not_a_bundle(tmp_path: Path, content: bytes) -> None:
    path = write(tmp_path / "b.dsgb", content)
    for read in (bf.inspect, bf.verify, read_all):
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
        for _, chunks in bf.iter_parts(path):
            for chunk in chunks:
                received.append(chunk)  # noqa: PERF402 (one at a time: keep those before an error)
    except BundleError as exc:
        return received, exc
    return received, None


def test_damage_in_the_last_chunk_stops_before_the_stream_is_whole(tmp_path: Path) -> None:
    last = [start for rtype, start, _ in records(BIG) if rtype == b"C"][2]  # part 1's last chunk
    received, error = consume(write(tmp_path / "b.dsgb", flipped(BIG, last + 20)))
    assert isinstance(error, BundleCorruptError)
    assert sum(map(len, received)) < len(BIG_PARTS[0])


def test_chunks_out_of_order_are_caught_by_the_part_checksum(tmp_path: Path) -> None:
    # Swapping two whole chunk records keeps every record checksum valid.
    (_, a, la), (_, b, lb) = [r for r in records(BIG) if r[0] == b"C"][:2]
    first, second = BIG[a : a + 41 + la], BIG[b : b + 41 + lb]
    path = write(tmp_path / "b.dsgb", BIG[:a] + second + first + BIG[b + 41 + lb :])
    received, error = consume(path)
    assert isinstance(error, BundleCorruptError) and "out of order" in str(error)
    assert sum(map(len, received)) < len(BIG_PARTS[0])  # the part's last chunk was held back
    with pytest.raises(BundleCorruptError, match="sha256"):
        bf.verify(path)


def test_skipping_a_part_still_checks_it(tmp_path: Path) -> None:
    chunk = next(start for rtype, start, _ in records(BIG) if rtype == b"C")
    parts = bf.iter_parts(write(tmp_path / "b.dsgb", flipped(BIG, chunk + 9)))
    summary, _ = next(parts)
    assert summary.index == 0
    with pytest.raises(BundleCorruptError):
        next(parts)


def test_going_on_after_an_error_raises_again(tmp_path: Path) -> None:
    chunk = next(start for rtype, start, _ in records(BIG) if rtype == b"C")
    parts = bf.iter_parts(write(tmp_path / "b.dsgb", flipped(BIG, chunk + 9)))
    _, chunks = next(parts)
    with pytest.raises(BundleCorruptError):
        list(chunks)
    with pytest.raises(BundleCorruptError):
        next(parts)


def test_iter_parts_yields_the_trailer_summaries(tmp_path: Path) -> None:
    path = write(tmp_path / "b.dsgb", BIG)
    info = bf.inspect(path)
    seen = []
    for summary, chunks in bf.iter_parts(path, expect=info):
        seen.append(summary)
        assert b"".join(chunks) == BIG_PARTS[summary.index]
    assert tuple(seen) == info.parts


def test_iter_parts_refuses_a_bundle_that_changed_since_inspect(tmp_path: Path) -> None:
    path = write(tmp_path / "b.dsgb", BIG)
    info = bf.inspect(path)
    write(path, build([b"other"]))
    with pytest.raises(BundleError, match="changed since it was inspected"):
        next(bf.iter_parts(path, expect=info))


# ---------------------------------------------------------------------------- progress, memory
def recorder() -> tuple[list[tuple[int, int | None]], Callable[[int, int | None], None]]:
    calls: list[tuple[int, int | None]] = []
    return calls, lambda done, total: calls.append((done, total))


def assert_progress(calls: list[tuple[int, int | None]], total: int) -> None:
    dones = [done for done, _ in calls]
    assert dones == sorted(dones) and dones[-1] == total
    assert all(t == total for _, t in calls)
    assert len(calls) <= total // MiB + 2 * len(BIG_PARTS)  # per chunk, not per byte


def test_progress_is_monotonic_and_ends_at_the_total(tmp_path: Path) -> None:
    total = sum(map(len, BIG_PARTS))
    calls, progress = recorder()
    path = write(tmp_path / "b.dsgb", build(BIG_PARTS, progress=progress, total=total))
    assert_progress(calls, total)
    calls, progress = recorder()
    bf.verify(path, progress=progress)
    assert_progress(calls, total)
    calls, progress = recorder()
    for _, chunks in bf.iter_parts(path, progress=progress):
        for _ in chunks:
            pass
    assert_progress(calls, total)


def test_memory_stays_flat_for_a_64_mib_bundle(tmp_path: Path) -> None:
    size, rng = 64 * MiB, random.Random(3)
    remaining = [size]

    def read(n: int) -> bytes:
        n = min(n, remaining[0])
        remaining[0] -= n
        return rng.randbytes(n)

    path = tmp_path / "big.dsgb"
    tracemalloc.start()
    try:
        with open(path, "wb") as f, bf.BundleWriter(f, METADATA) as writer:
            writer.add_part({"snapshot": "big"}, read)
        info = bf.verify(path)
        for _, chunks in bf.iter_parts(path):
            for _ in chunks:
                pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.total_size == size
    assert peak < 8 * MiB, f"peak {peak / MiB:.1f} MiB"
