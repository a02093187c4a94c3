"""Import leaves the streams' bytes to ZFS's own stream checksums as it receives them
(issue #15): a bundle whose stream bytes are damaged in the middle of a large part still
changes nothing, and the error names the damaged chunk. A bundle whose chunk digests lie
about a stream ZFS accepts whole is refused with ``check_streams`` (the digests checked
while ZFS receives) and by ``verify_bundle``, and lands by default: what lands is the
stream as ZFS sent it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from dsg_storage import BundleCorruptError, Repository
from dsg_storage.names import P_IMPORT
from dsg_storage.transfer.check import inspect_bundle, verify_bundle
from dsg_storage.transfer.export import export_bundle
from dsg_storage.transfer.importing import import_bundle
from tests import craft, zstream

from .cli import dsg, with_src
from .conftest import Sandbox
from .test_bundles import commit, files, history

BIG = 8 << 20  # a part of several MiB: its middle chunk is far from both ends


def seen(sandbox: Sandbox, repo: Repository, mnt: Path) -> tuple[object, ...]:
    """All a user sees: every dataset and snapshot in the sandbox, the repository's
    history, mounts, mountpoint property, import mark and files."""
    if not repo.exists():
        return (sandbox.datasets(), sandbox.mounts(), None)
    props = subprocess.run(
        ["zfs", "get", "-H", "-o", "property,value,source", f"mountpoint,{P_IMPORT}", repo.name],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # An import mark cleared by recovery stays as an empty local value ("" is no mark,
    # like unset): compare what it means, not how ZFS stores it.
    props = props.replace(f"{P_IMPORT}\t\tlocal", f"{P_IMPORT}\t-\t-")
    return (sandbox.datasets(), sandbox.mounts(), history(repo), props, files(mnt))


def flip_mid_stream(bundle: Path) -> None:
    """Flip one byte in the middle of the largest part's stream: ZFS's own stream
    checksum refuses it, and so does its chunk digest."""
    part = max(inspect_bundle(bundle).parts, key=lambda p: p.size)
    assert part.size >= BIG
    with open(bundle, "r+b") as f:
        at = part.offset + part.size // 2
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x10]))


def flip_with_record_checksums_zeroed(bundle: Path) -> None:
    """Zero every record checksum of the largest part's stream (ZFS skips a zero one)
    and flip a byte in it: the END record's checksum still refuses it."""
    part = max(inspect_bundle(bundle).parts, key=lambda p: p.size)
    data = bytearray(bundle.read_bytes())
    stream = data[part.offset : part.offset + part.size]
    zstream.zero_record_checksums(stream)
    data[part.offset : part.offset + part.size] = stream
    bundle.write_bytes(data)
    flip_mid_stream(bundle)


def digests_of_another_stream(bundle: Path) -> None:
    """Rewrite the bundle so that its largest part's chunk digests (and every hash over
    them) are those of the stream with a byte flipped, while the file holds the stream
    as sent: a valid stream ZFS receives whole, which only the digests refute."""
    info = inspect_bundle(bundle)
    big = max(info.parts, key=lambda p: p.size)
    data = bundle.read_bytes()
    streams = [data[p.offset : p.offset + p.size] for p in info.parts]
    middle = big.size // 2
    lying = bytearray(streams[big.index])
    lying[middle] ^= 0x10
    parts = [
        (craft.dumps(p.info), bytes(lying) if p.index == big.index else s)
        for p, s in zip(info.parts, streams, strict=True)
    ]
    craft.write_raw(bundle, craft.dumps(info.metadata), parts)
    rewritten = inspect_bundle(bundle).parts[big.index]
    with open(bundle, "r+b") as f:  # the true stream where the digests expect the other
        f.seek(rewritten.offset)
        f.write(streams[big.index])


DAMAGE = {
    "flipped": (flip_mid_stream, False),
    "flipped-zero-checksums": (flip_with_record_checksums_zeroed, False),
    "flipped-check-streams": (flip_mid_stream, True),
    "zfs-accepts-check-streams": (digests_of_another_stream, True),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("kind", ["full", "incremental"])
def test_damage_mid_part_changes_nothing(sandbox: Sandbox, tmp_path: Path, kind: str, damage: str) -> None:
    spoil, check_streams = DAMAGE[damage]
    source = Repository(f"{sandbox.dataset}/src", allow=sandbox.allow)
    src_mnt = sandbox.mount_dir / "src"
    for n in range(2):
        commit(source, src_mnt, {"a.txt": f"v{n}"}, f"commit {n}")
    target = Repository(f"{sandbox.dataset}/dst", allow=sandbox.allow)
    mnt = sandbox.mount_dir / "dst"
    bundle = tmp_path / "b.dsgb"
    if kind == "incremental":
        export_bundle(source.name, tmp_path / "base.dsgb")
        import_bundle(tmp_path / "base.dsgb", target.name, mountpoint=str(mnt), allow=sandbox.allow)
        since = source.history()[-1].name
    commit(source, src_mnt, {"a.txt": "v2", "big.bin": os.urandom(BIG)}, "big")
    commit(source, src_mnt, {"a.txt": "v3", "big.bin": os.urandom(BIG)}, "big again")
    export_bundle(source.name, bundle, since=since if kind == "incremental" else None)
    good = bundle.read_bytes()
    spoil(bundle)
    before = seen(sandbox, target, mnt)

    with pytest.raises(BundleCorruptError, match=r"chunk \d+ of part \d+"):
        import_bundle(
            bundle,
            target.name,
            mountpoint=str(mnt) if kind == "full" else None,
            allow=sandbox.allow,
            check_streams=check_streams,
        )

    assert seen(sandbox, target, mnt) == before  # nothing arrived, nothing left behind
    assert not [n for n in sandbox.datasets() if ".dsg-" in n or "%" in n]
    # and the undamaged bundle lands after all that
    bundle.write_bytes(good)
    import_bundle(bundle, target.name, mountpoint=str(mnt) if kind == "full" else None, allow=sandbox.allow)
    assert history(target) == history(source)
    assert files(mnt) == files(src_mnt)


@pytest.mark.parametrize("kind", ["full", "incremental"])
def test_lying_digests_over_a_sound_stream(sandbox: Sandbox, tmp_path: Path, kind: str) -> None:
    """Chunk digests that do not match a stream ZFS accepts whole: no accident makes
    that (the digests' own record and the structure hash are checked first), only a
    rewrite, which could as well have made them match. By default the import lands the
    stream as ZFS sent it; ``verify_bundle`` (the full check) refuses the bundle."""
    source = Repository(f"{sandbox.dataset}/src", allow=sandbox.allow)
    src_mnt = sandbox.mount_dir / "src"
    commit(source, src_mnt, {"a.txt": "v0"}, "commit 0")
    target = Repository(f"{sandbox.dataset}/dst", allow=sandbox.allow)
    mnt = sandbox.mount_dir / "dst"
    if kind == "incremental":
        export_bundle(source.name, tmp_path / "base.dsgb")
        import_bundle(tmp_path / "base.dsgb", target.name, mountpoint=str(mnt), allow=sandbox.allow)
    since = source.history()[-1].name
    commit(source, src_mnt, {"a.txt": "v1", "big.bin": os.urandom(BIG)}, "big")
    bundle = tmp_path / "b.dsgb"
    export_bundle(source.name, bundle, since=since if kind == "incremental" else None)
    digests_of_another_stream(bundle)

    with pytest.raises(BundleCorruptError, match=r"chunk \d+ of part \d+"):
        verify_bundle(bundle)
    import_bundle(bundle, target.name, mountpoint=str(mnt) if kind == "full" else None, allow=sandbox.allow)
    assert history(target) == history(source)
    assert files(mnt) == files(src_mnt)


def test_check_streams_on_the_command_line(sandbox: Sandbox, tmp_path: Path) -> None:
    """``bundle import --check-streams``: the full check of ``verify`` while ZFS receives,
    so lying digests are refused (exit 9) and nothing is left; without it the bundle lands."""
    source = Repository(f"{sandbox.dataset}/src", allow=sandbox.allow)
    src_mnt = sandbox.mount_dir / "src"
    commit(source, src_mnt, {"a.txt": "v0", "big.bin": os.urandom(BIG)}, "big")
    bundle = tmp_path / "b.dsgb"
    export_bundle(source.name, bundle)
    digests_of_another_stream(bundle)

    def import_into(into: str, *flags: str) -> subprocess.CompletedProcess[str]:
        return dsg(
            *("bundle", "import", str(bundle), "--into", into),
            *("--mountpoint", str(sandbox.mount_dir / into.rsplit("/", 1)[1]), *flags),
            *("--audit-log", str(tmp_path / "audit.log")),
            allow=sandbox.dataset,
            json=False,
            env=with_src(),
        )

    checked = import_into(f"{sandbox.dataset}/checked", "--check-streams")
    assert checked.returncode == 9, checked.stderr
    assert "chunk" in checked.stderr
    assert not Repository(f"{sandbox.dataset}/checked", allow=sandbox.allow).exists()
    assert not (sandbox.mount_dir / "checked").exists() or not any((sandbox.mount_dir / "checked").iterdir())
    landed = import_into(f"{sandbox.dataset}/landed")
    assert landed.returncode == 0, landed.stderr
    assert files(sandbox.mount_dir / "landed") == files(src_mnt)
