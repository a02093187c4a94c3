"""The dsgtest pool tool (dsg_storage.testpool.pool) on real ZFS: idempotent, and it refuses what is not its own."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dsg_storage.zfs.mounts import zfs_mounts

POOL_TOOL = ("-m", "dsg_storage.testpool.pool")


def pool(*args: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, *POOL_TOOL, *args]
    if user is not None:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def test_create_is_idempotent_on_the_running_pool(worker_root: str) -> None:
    again = pool("create")
    assert again.returncode == 0, again.stderr
    assert "already exists" in again.stdout
    assert (
        "ONLINE"
        in subprocess.run(["zpool", "list", "-H", "dsgtest"], capture_output=True, text=True, check=True).stdout
    )


def test_any_other_pool_name_is_refused(worker_root: str) -> None:
    for action in ("create", "destroy"):
        result = pool(action, "--pool", "tank")
        assert result.returncode == 2 and "only manages the 'dsgtest' pool" in result.stderr


def test_a_file_that_is_not_ours_is_never_overwritten_or_deleted(worker_root: str, tmp_path: Path) -> None:
    foreign = tmp_path / "precious.img"
    foreign.write_bytes(b"somebody's data" * 1000)
    digest = hashlib.sha256(foreign.read_bytes()).hexdigest()
    for action in ("create", "destroy"):
        result = pool(action, "--file", str(foreign))
        assert result.returncode == 2 and "does not hold a dsgtest pool" in result.stderr, result.stderr
    assert hashlib.sha256(foreign.read_bytes()).hexdigest() == digest


def test_not_root_is_a_clear_error(worker_root: str) -> None:
    result = pool("status", user=65534)
    assert result.returncode == 2 and "needs root" in result.stderr


def test_bad_sizes_are_refused(worker_root: str, tmp_path: Path) -> None:
    for size in ("lots", "1M"):
        result = pool("create", "--file", str(tmp_path / "new.img"), "--size", size)
        assert result.returncode == 2 and "size" in result.stderr
    assert not (tmp_path / "new.img").exists()


# ------------------------------------------------------------ files the tool did not create
def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def imported() -> bool:
    return run("zpool", "list", "-H", "dsgtest").returncode == 0


def real_backing() -> Path:
    out = run("zpool", "list", "-H", "-P", "-v", "-o", "name", "dsgtest").stdout
    (vdev,) = [line.split("\t")[1] for line in out.splitlines() if line.startswith("\t")]
    return Path(vdev)


def dsgtest_mounts() -> dict[str, list[str]]:
    return {k: v for k, v in zfs_mounts().items() if k == "dsgtest" or k.startswith("dsgtest/")}


@pytest.fixture
def real_pool_exported(exclusive_pool: None) -> Iterator[Path]:
    """The suite's dsgtest pool, exported for the test (its backing file is yielded) and
    imported again afterwards by the tool, as its own file."""
    backing = real_backing()
    assert run("zpool", "export", "dsgtest").returncode == 0
    try:
        yield backing
    finally:
        if imported() and real_backing() != backing:  # a planted pool got in: out with it first
            run("zpool", "export", "-f", "dsgtest")
        if not imported():
            again = pool("create", "--file", str(backing))
            assert again.returncode == 0, again.stderr


def planted_pool(image: Path, mountpoint: Path) -> str:
    """A dsgtest pool made without the tool (as a local user could make one elsewhere and
    leave its file), with a dataset that wants to be mounted at ``mountpoint``; exported.
    Returns its GUID."""
    with open(image, "xb") as handle:
        handle.truncate(128 << 20)
    made = run("zpool", "create", "-o", "cachefile=none", "-m", "none", "dsgtest", str(image))
    assert made.returncode == 0, made.stderr
    assert run("zfs", "create", "-o", f"mountpoint={mountpoint}", "dsgtest/cron").returncode == 0
    guid = run("zpool", "get", "-H", "-p", "-o", "value", "guid", "dsgtest").stdout.strip()
    assert run("zpool", "export", "dsgtest").returncode == 0
    return guid


def refused(result: subprocess.CompletedProcess[str], *why: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    for text in why:
        assert text in result.stderr, result.stderr
    assert not imported() and dsgtest_mounts() == {}


def test_the_tools_own_file_is_imported_again_by_its_guid_with_nothing_mounted(real_pool_exported: Path) -> None:
    record = Path(str(real_pool_exported) + ".guid")
    assert record.stat().st_mode & 0o777 == 0o600 and real_pool_exported.stat().st_mode & 0o777 == 0o600
    assert not imported()
    again = pool("create", "--file", str(real_pool_exported))
    assert again.returncode == 0, again.stderr
    assert "imported again" in again.stdout
    assert real_backing() == real_pool_exported
    assert (
        run("zpool", "get", "-H", "-p", "-o", "value", "guid", "dsgtest").stdout.strip() == record.read_text().strip()
    )
    assert dsgtest_mounts() == {}  # -N: not even the pool's root dataset


def test_a_pool_file_the_tool_did_not_create_is_never_imported(real_pool_exported: Path, tmp_path: Path) -> None:
    where = tmp_path / "pool"
    where.mkdir(mode=0o700)
    image = where / "dsgtest.img"
    target = tmp_path / "cron.d"
    target.mkdir()
    guid = planted_pool(image, target)
    record = Path(f"{image}.guid")

    refused(pool("create", "--file", str(image)), str(image), "did not create", f"rm {image}")
    record.write_text(Path(f"{real_pool_exported}.guid").read_text())  # the real pool's GUID
    record.chmod(0o600)
    refused(pool("create", "--file", str(image)), f"holds pool GUID {guid}", "not the GUID")

    record.write_text(f"{guid}\n")  # from here on the record matches: only the file's checks refuse
    os.chown(image, 65534, 65534)
    refused(pool("create", "--file", str(image)), "owned by uid 65534", f"rm {image}")
    os.chown(image, 0, 0)
    image.chmod(0o666)
    refused(pool("create", "--file", str(image)), "writable by others")
    image.chmod(0o600)
    os.link(image, where / "second-name")
    refused(pool("create", "--file", str(image)), "has 2 links")
    (where / "second-name").unlink()
    (where / "link.img").symlink_to(image)
    (where / "link.img.guid").write_text(f"{guid}\n")
    refused(pool("create", "--file", str(where / "link.img")), "symbolic link")
    os.chown(where, 65534, 65534)
    refused(pool("create", "--file", str(image)), f"{where} is owned by uid 65534")
    os.chown(where, 0, 0)
    where.chmod(0o777)
    refused(pool("create", "--file", str(image)), f"{where} is writable by others")
    where.chmod(0o700)

    # With every check passed (root made it and recorded it) it is imported, mounting nothing.
    imported_now = pool("create", "--file", str(image))
    assert imported_now.returncode == 0, imported_now.stderr
    assert real_backing() == image and dsgtest_mounts() == {}
    assert run("zpool", "export", "dsgtest").returncode == 0


def test_a_users_pool_file_at_the_old_default_path_is_refused(real_pool_exported: Path, tmp_path: Path) -> None:
    """The attack of issue #23: a local user leaves a dsgtest pool file at /var/tmp/dsgtest.img,
    which older versions imported (and mounted) by default. /var/tmp is everyone's: refused."""
    target = tmp_path / "cron.d"
    target.mkdir()
    made = tmp_path / "made.img"
    guid = planted_pool(made, target)
    image = Path("/var/tmp/dsgtest.img")
    try:
        shutil.copyfile(made, image)
        Path(f"{image}.guid").write_text(f"{guid}\n")  # even with a record beside it
        for file in (image, Path(f"{image}.guid")):
            os.chown(file, 65534, 65534)
        refused(pool("create", "--file", str(image)), f"refusing backing file {image}: /var/tmp is writable by others")
        assert target.stat().st_dev == tmp_path.stat().st_dev  # nothing mounted there
    finally:
        image.unlink()
        Path(f"{image}.guid").unlink()


def test_a_pool_imported_from_an_unsafe_place_is_destroyed_but_its_file_left(
    real_pool_exported: Path, tmp_path: Path
) -> None:
    """Upgrading from a version that used /var/tmp/dsgtest.img: destroy still works."""
    image = Path("/var/tmp/dsgtest.img")
    with open(image, "xb") as handle:
        handle.truncate(128 << 20)
    try:
        made = run("zpool", "create", "-o", "cachefile=none", "-m", "none", "dsgtest", str(image))
        assert made.returncode == 0, made.stderr
        destroyed = pool("destroy", "--file", str(image))
        assert destroyed.returncode == 0, destroyed.stderr
        assert "left in place" in destroyed.stdout and "/var/tmp is writable by others" in destroyed.stdout
        assert not imported() and image.exists()
    finally:
        image.unlink()
