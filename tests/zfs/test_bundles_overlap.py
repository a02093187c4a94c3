"""Import checks the streams' bytes while ZFS receives them (issue #15): a bundle whose
stream bytes are damaged in the middle of a large part still changes nothing, whether
ZFS refuses the damaged stream itself or accepts it and only the chunk digests tell."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from dsg_storage import BundleCorruptError, Repository
from dsg_storage.names import P_IMPORT
from dsg_storage.transfer.bundle import export_bundle, import_bundle, inspect_bundle
from tests import craft

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


@pytest.mark.parametrize("damage", [flip_mid_stream, digests_of_another_stream], ids=["flipped", "zfs-accepts"])
@pytest.mark.parametrize("kind", ["full", "incremental"])
def test_damage_mid_part_changes_nothing(
    sandbox: Sandbox, tmp_path: Path, kind: str, damage: Callable[[Path], None]
) -> None:
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
    damage(bundle)
    before = seen(sandbox, target, mnt)

    with pytest.raises(BundleCorruptError, match=r"chunk \d+ of part \d+"):
        import_bundle(bundle, target.name, mountpoint=str(mnt) if kind == "full" else None, allow=sandbox.allow)

    assert seen(sandbox, target, mnt) == before  # nothing arrived, nothing left behind
    assert not [n for n in sandbox.datasets() if ".dsg-" in n or "%" in n]
    # and the undamaged bundle lands after all that
    bundle.write_bytes(good)
    import_bundle(bundle, target.name, mountpoint=str(mnt) if kind == "full" else None, allow=sandbox.allow)
    assert history(target) == history(source)
    assert files(mnt) == files(src_mnt)
