"""Bundles and lock files on real ZFS: round trips, every bad bundle refused with the
target untouched, imports killed midway, lock file match and mismatch."""

from __future__ import annotations

import json
import os
import struct
import subprocess
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

import pytest

from dsg_storage import (
    BundleCorruptError,
    BundleError,
    BundleTruncatedError,
    BundleVersionError,
    ConflictError,
    DatasetExistsError,
    NotABundleError,
    Repository,
)
from dsg_storage.transfer.check import inspect_bundle, verify_bundle
from dsg_storage.transfer.export import export_bundle
from dsg_storage.transfer.importing import import_bundle
from tests import zstream

from .cli import dsg, with_src
from .conftest import Sandbox
from .test_crash_safety import at_step, export_and_import, in_child, reboot_sweep_steps, traced
from .test_transactions import owner_mode

OWNER = "1234:5678"


def commit(repo: Repository, mnt: Path, content: dict[str, str | bytes], message: str) -> None:
    with repo.begin(mountpoint=str(mnt), owner=OWNER, mode="0750") as tx:
        for name in os.listdir(tx.path):
            Path(tx.path, name).unlink()
        for name, data in content.items():
            target = Path(tx.path, name)
            target.write_bytes(data) if isinstance(data, bytes) else target.write_text(data)
        tx.commit(message)


def files(path: Path | str) -> dict[str, bytes]:
    root = Path(path)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def history(repo: Repository) -> list[tuple[str, int, str | None, str]]:
    return [(c.name, c.guid, c.message, c.tx) for c in repo.history()]


def props(dataset: str) -> list[str]:
    """What ``zfs get`` shows of the properties an import may change: value and source."""
    names = "setuid,devices,zoned,mountpoint,canmount,dsg-storage:import"
    out = subprocess.run(
        ["zfs", "get", "-H", "-o", "property,value,source", names, dataset], capture_output=True, text=True, check=True
    )
    return out.stdout.splitlines()


def state(sandbox: Sandbox, repo: Repository, mnt: Path) -> tuple[object, ...]:
    """What a user sees of ``repo``: datasets and snapshots, history, files (or absent),
    and the properties an import may change."""
    leaf = repo.name.removeprefix(sandbox.dataset + "/")
    names = [n for n in sandbox.datasets() if n == leaf or n.startswith((leaf + "@", leaf + "."))]
    if not repo.exists():
        return (names, None, None, None)
    return (names, history(repo), files(mnt), props(repo.name))


@pytest.fixture
def source(sandbox: Sandbox) -> Repository:
    repo = Repository(f"{sandbox.dataset}/src", allow=sandbox.allow)
    for n in range(3):
        commit(repo, sandbox.mount_dir / "src", {"a.txt": f"v{n}", f"only{n}.txt": "x"}, f"commit {n}")
    return repo


def test_full_and_incremental_round_trip(sandbox: Sandbox, source: Repository, tmp_path: Path) -> None:
    full = tmp_path / "full.dsgb"
    exported: list[tuple[int, int | None]] = []
    info = export_bundle(source.name, full, progress=lambda done, total: exported.append((done, total)))
    assert info.metadata["type"] == "full" and len(info.parts) == 3
    assert exported[-1] == (info.total_size, info.total_size)
    assert [d for d, _ in exported] == sorted(d for d, _ in exported)
    target = Repository(f"{sandbox.dataset}/dst", allow=sandbox.allow)
    mnt = sandbox.mount_dir / "dst"
    imported: list[tuple[int, int | None]] = []
    result = import_bundle(
        full, target.name, mountpoint=str(mnt), allow=sandbox.allow, progress=lambda d, t: imported.append((d, t))
    )
    assert imported[-1] == (info.total_size, info.total_size)  # the receive alone: ZFS checks the streams
    assert [d for d, _ in imported] == sorted(d for d, _ in imported)
    assert result.kind == "full" and len(result.snapshots) == 3
    assert history(target) == history(source)  # names, GUIDs, messages, transaction ids
    assert files(mnt) == files(sandbox.mount_dir / "src")
    assert owner_mode(mnt) == (os.getuid(), os.getgid(), 0o755)  # the importer's, not the bundle's
    assert sandbox.mounts()[target.name] == [str(mnt)]

    since = source.history()[-1].name
    for n in (3, 4):
        commit(source, sandbox.mount_dir / "src", {"a.txt": f"v{n}", "big.bin": os.urandom(300_000)}, f"commit {n}")
    incremental = tmp_path / "incr.dsgb"
    info = export_bundle(source.name, incremental, since=since)
    assert info.metadata["type"] == "incremental" and info.metadata["base"]["name"] == since
    result = import_bundle(incremental, target.name, allow=sandbox.allow)
    assert result.kind == "incremental" and len(result.snapshots) == 2
    assert history(target) == history(source)
    assert files(mnt) == files(sandbox.mount_dir / "src")
    # the imported repository is an ordinary one: transactions work on it
    commit(target, mnt, {"after.txt": "ok"}, "after import")
    assert files(mnt) == {"after.txt": b"ok"} and len(target.history()) == 6
    assert not [n for n in sandbox.datasets() if ".dsg-" in n]


def corruptions(bundle: bytes) -> dict[str, bytes]:
    middle = len(bundle) // 2
    return {
        "flipped byte in the metadata": bundle[:40] + bytes([bundle[40] ^ 1]) + bundle[41:],
        "flipped byte mid-stream": bundle[:middle] + bytes([bundle[middle] ^ 0x10]) + bundle[middle + 1 :],
        "flipped byte near the end": bundle[:-40] + bytes([bundle[-40] ^ 1]) + bundle[-39:],
        "truncated": bundle[: len(bundle) * 2 // 3],
        "newer format version": bundle[:8] + struct.pack(">I", 99) + bundle[12:],
        "not a bundle": os.urandom(4096),
    }


EXPECTED = {
    "flipped byte in the metadata": BundleCorruptError,
    "flipped byte mid-stream": BundleCorruptError,
    "flipped byte near the end": BundleCorruptError,
    "truncated": BundleTruncatedError,
    "newer format version": BundleVersionError,
    "not a bundle": NotABundleError,
}


def copy_of_first_two_commits(sandbox: Sandbox, source: Repository, tmp_path: Path) -> tuple[Repository, Path]:
    """``dst``: ``source`` up to its second commit, imported from ``full.dsgb``; and
    ``incr.dsgb``, the rest of ``source`` as an incremental bundle."""
    target = Repository(f"{sandbox.dataset}/dst", allow=sandbox.allow)
    mnt = sandbox.mount_dir / "dst"
    export_bundle(source.name, tmp_path / "full.dsgb", snapshot=source.history()[1].name)
    import_bundle(tmp_path / "full.dsgb", target.name, mountpoint=str(mnt), allow=sandbox.allow)
    export_bundle(source.name, tmp_path / "incr.dsgb", since=source.history()[1].name)
    return target, mnt


def test_bad_bundles_leave_the_target_unchanged(sandbox: Sandbox, source: Repository, tmp_path: Path) -> None:
    target, mnt = copy_of_first_two_commits(sandbox, source, tmp_path)
    full = (tmp_path / "full.dsgb").read_bytes()
    incremental = (tmp_path / "incr.dsgb").read_bytes()
    before = state(sandbox, target, mnt)
    fresh = Repository(f"{sandbox.dataset}/fresh", allow=sandbox.allow)
    for name, bad in [*corruptions(incremental).items()]:
        path = tmp_path / "bad.dsgb"
        path.write_bytes(bad)
        with pytest.raises(EXPECTED[name]):
            import_bundle(path, target.name, allow=sandbox.allow)
        assert state(sandbox, target, mnt) == before, name
    for name, bad in corruptions(full).items():
        path = tmp_path / "bad.dsgb"
        path.write_bytes(bad)
        with pytest.raises(EXPECTED[name]):
            import_bundle(path, fresh.name, mountpoint=str(sandbox.mount_dir / "fresh"), allow=sandbox.allow)
        assert not fresh.exists() and not [n for n in sandbox.datasets() if ".dsg-" in n], name
    # a wrong base: made from commit 0, the target's latest is commit 1
    export_bundle(source.name, tmp_path / "old-base.dsgb", since=source.history()[0].name)
    with pytest.raises(BundleError, match="wrong base"):
        import_bundle(tmp_path / "old-base.dsgb", target.name, allow=sandbox.allow)
    # a full bundle onto an existing repository
    with pytest.raises(DatasetExistsError):
        import_bundle(tmp_path / "full.dsgb", target.name, allow=sandbox.allow)
    assert state(sandbox, target, mnt) == before
    # and the good one still lands after all that
    import_bundle(tmp_path / "incr.dsgb", target.name, allow=sandbox.allow)
    assert history(target) == history(source)


def test_changes_since_the_base_are_not_discarded(sandbox: Sandbox, source: Repository, tmp_path: Path) -> None:
    target, mnt = copy_of_first_two_commits(sandbox, source, tmp_path)
    (mnt / "written-outside.txt").write_text("precious")
    with pytest.raises(ConflictError, match="written-outside.txt"):
        import_bundle(tmp_path / "incr.dsgb", target.name, allow=sandbox.allow)
    assert (mnt / "written-outside.txt").read_text() == "precious"


def rebooted(sandbox: Sandbox, target: Repository, mnt: Path, step: int) -> dict[str, str] | None:
    """Export and import the pool (what a reboot does): what ZFS mounted at ``mnt`` then,
    which is never a temporary dataset."""
    export_and_import()
    at_path = sorted(ds for ds, paths in sandbox.mounts().items() if str(mnt) in paths)
    assert at_path in ([], [target.name]), (step, at_path)
    return files(mnt) if at_path else None


def killed_at_every_step(
    sandbox: Sandbox, source: Repository, tmp_path: Path, kind: str, *, reboot: bool = False
) -> list[str]:
    """Import ``kind`` of bundle, killed after each step in turn; ``reboot``: then export
    and import the pool (what a reboot does) before recovery. Checks old-or-new at every
    step and returns the outcomes."""
    target = Repository(f"{sandbox.dataset}/dst", allow=sandbox.allow)
    mnt = sandbox.mount_dir / "dst"
    commits = source.history()
    bundle = tmp_path / "b.dsgb"
    if kind == "incremental":
        export_bundle(source.name, tmp_path / "base.dsgb", snapshot=commits[0].name)
        export_bundle(source.name, bundle, since=commits[0].name)
    else:
        export_bundle(source.name, bundle)
    outcomes = []
    mountpoint = str(mnt) if kind == "full" else None
    new_history = [(c.name, c.guid, c.message, c.tx) for c in commits]

    def importing() -> Callable[[], object]:
        if kind == "incremental":
            import_bundle(tmp_path / "base.dsgb", target.name, mountpoint=str(mnt), allow=sandbox.allow)
        return lambda: import_bundle(bundle, target.name, mountpoint=mountpoint, zfs=sandbox.zfs)

    steps: Iterable[int] = range(1, 40)
    if reboot:  # only the steps that leave something on disk differ after a reboot
        steps = reboot_sweep_steps(traced(importing(), sandbox.zfs, tmp_path))
        subprocess.run(["zfs", "destroy", "-r", target.name], check=True)
    for step in steps:
        run_import = importing()
        old = state(sandbox, target, mnt)
        run = in_child(run_import, crash_at=at_step(step), zfs=sandbox.zfs)
        seen = rebooted(sandbox, target, mnt, step) if reboot else None
        target.recover()
        now = state(sandbox, target, mnt)
        if now == old:
            outcomes.append("old")
        else:
            assert now[1] == new_history and now[2] == files(sandbox.mount_dir / "src"), (step, now)
            assert sandbox.mounts()[target.name] == [str(mnt)]
            outcomes.append("new")
        # What ZFS mounted at boot was what recovery then settled on: nothing uncommitted.
        assert seen is None or seen == now[2], (step, outcomes[-1], seen)
        assert not [n for n in sandbox.datasets() if ".dsg-" in n]
        if target.exists():
            assert not [p for p in props(target.name) if p.startswith("zoned") and "local" in p], step
        if run == "done":  # the import finished before reaching this step: all covered
            break
        if target.exists():
            subprocess.run(["zfs", "destroy", "-r", target.name], check=True)
    assert outcomes[-1] == "new" and "old" in outcomes
    return outcomes


@pytest.mark.parametrize("kind", ["full", "incremental"])
def test_import_killed_at_every_step_leaves_old_or_new(
    sandbox: Sandbox, source: Repository, tmp_path: Path, kind: str, record_property: pytest.RecordProperty
) -> None:
    outcomes = killed_at_every_step(sandbox, source, tmp_path, kind)
    record_property("crash_points", f"bundle import ({kind}): {len(outcomes)} steps, {outcomes}")


@pytest.mark.parametrize("kind", ["full", "incremental"])
def test_import_killed_then_rebooted_never_shows_what_it_received_uncommitted(
    exclusive_pool: None, sandbox: Sandbox, source: Repository, tmp_path: Path, kind: str
) -> None:
    """ZFS mounts at boot what it can: never what an import had received before its
    commit point (``zoned=on`` until then), only the old or the committed repository."""
    killed_at_every_step(sandbox, source, tmp_path, kind, reboot=True)


def test_a_refused_import_leaves_the_repository_properties_as_they_were(
    sandbox: Sandbox, source: Repository, tmp_path: Path
) -> None:
    """setuid and devices are set only once the bundle was received whole."""
    target, mnt = copy_of_first_two_commits(sandbox, source, tmp_path)
    for prop in ("setuid", "devices"):
        subprocess.run(["zfs", "inherit", prop, target.name], check=True)
    before = state(sandbox, target, mnt)
    bad = bytearray((tmp_path / "incr.dsgb").read_bytes())
    part = inspect_bundle(tmp_path / "incr.dsgb").parts[-1]
    stream = bad[part.offset : part.offset + part.size]
    write = max((r for r in zstream.records(stream) if r.type == zstream.WRITE), key=lambda r: r.payload)
    bad[part.offset + write.payload_at + write.payload // 2] ^= 0x10  # file data: ZFS's checksums catch it
    (tmp_path / "bad.dsgb").write_bytes(bad)
    with pytest.raises(BundleError):
        import_bundle(tmp_path / "bad.dsgb", target.name, allow=sandbox.allow)
    assert state(sandbox, target, mnt) == before
    import_bundle(tmp_path / "incr.dsgb", target.name, allow=sandbox.allow)
    assert history(target) == history(source)
    on = [line.split("\t") for line in props(target.name)]
    assert ["setuid", "off", "local"] in on and ["devices", "off", "local"] in on
    assert ["zoned", "off", "default"] in on and ["dsg-storage:import", "-", "-"] in on


def test_import_killed_mid_stream_leaves_nothing(sandbox: Sandbox, source: Repository, tmp_path: Path) -> None:
    commit(source, sandbox.mount_dir / "src", {"big.bin": os.urandom(24 << 20)}, "big")
    bundle = tmp_path / "big.dsgb"
    export_bundle(source.name, bundle)
    target = Repository(f"{sandbox.dataset}/dst", allow=sandbox.allow)
    mnt = sandbox.mount_dir / "dst"
    verify_bundle(bundle)  # warm the page cache: the child's verify pass is then short
    run = in_child(lambda: import_bundle(bundle, target.name, mountpoint=str(mnt), allow=sandbox.allow), kill_after=4.0)
    target.recover()
    # All or nothing: a kill before the import's commit point (its rename) leaves no
    # repository; one after it (the remount and the audit line still to come) the whole.
    if run == "killed" and not target.exists():
        pass
    else:
        assert history(target) == history(source)
    assert not [n for n in sandbox.datasets() if ".dsg-" in n or "%" in n]


def test_cli_bundle_inspect_verify_and_lock_files(sandbox: Sandbox, source: Repository, tmp_path: Path) -> None:
    env = with_src()
    cli = partial(dsg, allow=sandbox.dataset, env=env)

    bundle = str(tmp_path / "b.dsgb")
    exported = cli("bundle", "export", source.name, "-o", bundle)
    assert exported.returncode == 0, exported.stderr
    inspected = json.loads(cli("bundle", "inspect", bundle).stdout)
    assert [s["name"] for s in inspected["metadata"]["snapshots"]] == [c.name for c in source.history()]
    assert [s["guid"] for s in inspected["metadata"]["snapshots"]] == [str(c.guid) for c in source.history()]
    assert inspected == {**inspected, "format_version": 1} and inspect_bundle(bundle).total_size > 0
    assert json.loads(cli("bundle", "verify", bundle).stdout)["ok"] is True
    damaged = tmp_path / "d.dsgb"
    raw = Path(bundle).read_bytes()
    damaged.write_bytes(raw[:500] + bytes([raw[500] ^ 4]) + raw[501:])
    bad = cli("bundle", "verify", str(damaged))
    assert bad.returncode == 9 and "damaged" in bad.stderr

    outside = cli("bundle", "import", bundle, "--into", "dsgtest/not-allowed", "--mountpoint", str(tmp_path / "x"))
    assert outside.returncode == 3 and not Path(tmp_path / "x").exists()
    missing = cli("bundle", "export", f"{sandbox.dataset}/nope", "-o", str(tmp_path / "nope.dsgb"))
    assert missing.returncode == 4 and not (tmp_path / "nope.dsgb").exists()

    lock = str(tmp_path / "src.lock")
    assert cli("lock", source.name, "-o", lock).returncode == 0
    imported = cli(
        "bundle", "import", bundle, "--into", f"{sandbox.dataset}/copy", "--mountpoint", str(sandbox.mount_dir / "copy")
    )
    assert imported.returncode == 0, imported.stderr
    match = cli("verify", "--lock", lock, f"{sandbox.dataset}/copy")
    assert match.returncode == 0 and json.loads(match.stdout)["matches"] is True
    commit(source, sandbox.mount_dir / "src", {"a.txt": "later"}, "later")
    other = Repository(f"{sandbox.dataset}/other", allow=sandbox.allow)
    commit(other, sandbox.mount_dir / "other", {"a.txt": "x"}, "unrelated")
    later = cli("verify", "--lock", lock, source.name)
    assert later.returncode == 10 and json.loads(later.stdout)["extra"][0]["name"] == source.history()[-1].name
    unrelated = json.loads(cli("verify", "--lock", lock, other.name).stdout)
    assert unrelated["matches"] is False and len(unrelated["missing"]) == 3
    text = dsg("verify", "--lock", lock, source.name, json=False, env=env)
    assert text.returncode == 10 and "does not match" in text.stdout and "extra" in text.stdout
