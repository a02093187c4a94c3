"""What ZFS itself checks of a send stream, which bundle import relies on (issue #15):
every record header but BEGIN's carries a fletcher4 of the stream before it, compared
unless all zeros, and the END record one of every byte before it (the record checksums
included), compared always. A stream that fails either is refused (ECKSUM) and leaves
nothing received; only one rewritten on purpose, its END checksum recomputed, gets
past: the case no digest stored in an unsigned bundle refutes either."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dsg_storage import Repository, ZfsError
from tests import zstream

from .conftest import Sandbox
from .test_bundles import commit


def stream_of(sandbox: Sandbox, snapshot: str, tmp_path: Path, base: str | None = None) -> bytearray:
    path = tmp_path / "s.zstream"
    with open(path, "wb") as out:
        sandbox.zfs.send_to(out.fileno(), snapshot, base)
    return bytearray(path.read_bytes())


def receive(sandbox: Sandbox, stream: bytes | bytearray, snapshot: str, tmp_path: Path) -> None:
    path = tmp_path / "r.zstream"
    path.write_bytes(stream)
    with open(path, "rb") as f:
        sandbox.zfs.receive_from(f.fileno(), snapshot)


def flip_in_a_write(stream: bytearray) -> None:
    """Flip a byte in the middle of the largest WRITE record's payload (file data)."""
    write = max((r for r in zstream.records(stream) if r.type == zstream.WRITE), key=lambda r: r.payload)
    stream[write.payload_at + write.payload // 2] ^= 0x10


def zero_end_checksum(stream: bytearray) -> None:
    end = next(r for r in zstream.records(stream) if r.type == zstream.END)
    at = end.offset + zstream.END_CHECKSUM_AT
    stream[at : at + 32] = bytes(32)


@pytest.fixture
def source(sandbox: Sandbox) -> Repository:
    repo = Repository(f"{sandbox.dataset}/src", allow=sandbox.allow)
    commit(repo, sandbox.mount_dir / "src", {"a.txt": "v0", "big.bin": os.urandom(2 << 20)}, "one")
    commit(repo, sandbox.mount_dir / "src", {"a.txt": "v1", "big.bin": os.urandom(2 << 20)}, "two")
    return repo


DAMAGE = {
    "flipped": [flip_in_a_write],
    "flipped, record checksums zeroed": [flip_in_a_write, zstream.zero_record_checksums],
    # ZFS skips a zero record checksum, but the END checksum covers the record checksums
    # too: only a stream rewritten on purpose (END recomputed) gets past both
    "record checksums zeroed": [zstream.zero_record_checksums],
    "END checksum zeroed": [zero_end_checksum],
    "all checksums zeroed": [zstream.zero_record_checksums, zero_end_checksum],
}


@pytest.mark.parametrize("damage", list(DAMAGE), ids=list(DAMAGE))
@pytest.mark.parametrize("kind", ["full", "incremental"])
def test_zfs_refuses_a_damaged_stream_and_keeps_nothing(
    sandbox: Sandbox, source: Repository, tmp_path: Path, kind: str, damage: str
) -> None:
    first, second = (c.snapshot for c in source.history())
    target = f"{sandbox.dataset}/dst"
    if kind == "incremental":
        receive(sandbox, stream_of(sandbox, first, tmp_path), f"{target}@{first.split('@')[1]}", tmp_path)
        stream = stream_of(sandbox, second, tmp_path, base=first)
    else:
        stream = stream_of(sandbox, second, tmp_path)
    before = sandbox.datasets()
    for step in DAMAGE[damage]:
        step(stream)

    # pyzfs reports ECKSUM (and a malformed record) as BadStream
    with pytest.raises(ZfsError, match="BadStream"):
        receive(sandbox, stream, f"{target}@{second.split('@')[1]}", tmp_path)

    assert sandbox.datasets() == before  # nothing received, no %recv or partial dataset left


def test_walker_reads_a_real_stream(sandbox: Sandbox, source: Repository, tmp_path: Path) -> None:
    stream = stream_of(sandbox, source.history()[-1].snapshot, tmp_path)
    found = list(zstream.records(stream))
    assert found[0].type == zstream.BEGIN and found[-1].type == zstream.END
    assert found[-1].offset + zstream.HEADER == len(stream)
    assert sum(r.payload for r in found if r.type == zstream.WRITE) >= 2 << 20
