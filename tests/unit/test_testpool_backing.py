"""The pool tool's backing file, on the host: only a file the tool made, in a directory only root changes, is reused.

These are the checks alone; tests/zfs/test_testpool.py shows, on real ZFS, that a
refused file is never imported and nothing is mounted.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from dsg_storage.testpool import backing
from dsg_storage.testpool.backing import UnsafeFileError

OTHER = 65534


def fake_stat(mode: int, *, uid: int = 0, nlink: int = 1) -> os.stat_result:
    return os.stat_result((mode, 1, 1, nlink, uid, 0, 0, 0, 0, 0))


@pytest.fixture
def root_dir(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    if os.geteuid() != 0:
        pytest.fail("these tests change owners: run them as root (as CI does)")
    where = tmp_path / "pool"
    fd = backing.open_root_dir(str(where))
    yield fd, where
    os.close(fd)


def test_a_file_the_tool_made_passes_and_anything_else_is_refused_with_what_to_do() -> None:
    backing.check_image(fake_stat(stat.S_IFREG | 0o600), "/d/f.img", euid=0)
    backing.check_image(fake_stat(stat.S_IFREG | 0o644), "/d/f.img", euid=0)  # readable by others is fine
    cases = {
        "is not a regular file": fake_stat(stat.S_IFIFO | 0o600),
        f"is owned by uid {OTHER}, not by uid 0": fake_stat(stat.S_IFREG | 0o600, uid=OTHER),
        "has 2 links": fake_stat(stat.S_IFREG | 0o600, nlink=2),
        "is writable by others (mode 0620)": fake_stat(stat.S_IFREG | 0o620),
        "is writable by others (mode 0602)": fake_stat(stat.S_IFREG | 0o602),
    }
    for why, st in cases.items():
        with pytest.raises(UnsafeFileError) as refused:
            backing.check_image(st, "/d/f.img", euid=0)
        assert why in str(refused.value)
        assert "did not create it" in str(refused.value) and "rm /d/f.img" in str(refused.value)


def test_only_the_recorded_guid_is_imported() -> None:
    assert backing.verdict("/d/f.img", "123", "123", "dsgtest") == "123"
    with pytest.raises(UnsafeFileError, match=r"did not create \(no record /d/f.img.guid\).*rm /d/f.img\) and"):
        backing.verdict("/d/f.img", "123", None, "dsgtest")
    with pytest.raises(UnsafeFileError, match=r"holds pool GUID 456, not the GUID 123.*rm /d/f.img /d/f.img.guid"):
        backing.verdict("/d/f.img", "456", "123", "dsgtest")
    with pytest.raises(UnsafeFileError, match="holds pool GUID None"):  # a label zdb could not read a GUID from
        backing.verdict("/d/f.img", None, "123", "dsgtest")


def test_the_directory_is_created_0700_and_every_directory_above_is_checked(tmp_path: Path) -> None:
    where = tmp_path / "a" / "b"
    os.close(backing.open_root_dir(str(where)))
    assert stat.S_IMODE(where.stat().st_mode) == 0o700 and stat.S_IMODE(where.parent.stat().st_mode) == 0o700
    with pytest.raises(FileNotFoundError):
        backing.open_root_dir(str(tmp_path / "missing"), create=False)
    assert not (tmp_path / "missing").exists()
    # /tmp (sticky, writable by all) may be passed through, not ended in.
    with pytest.raises(UnsafeFileError, match="/tmp is writable by others"):
        backing.open_root_dir("/tmp")
    with pytest.raises(UnsafeFileError, match="'..' is not accepted"):
        backing.open_root_dir(f"{tmp_path}/a/../a")
    with pytest.raises(UnsafeFileError, match="not an absolute path"):
        backing.open_root_dir("relative/dir")


def test_a_link_or_a_directory_someone_else_can_change_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(UnsafeFileError, match="link is a symbolic link"):
        backing.open_root_dir(str(tmp_path / "link" / "pool"))
    assert not (real / "pool").exists()
    os.chown(real, OTHER, OTHER)
    with pytest.raises(UnsafeFileError, match=f"real is owned by uid {OTHER}"):
        backing.open_root_dir(str(real / "pool"))
    os.chown(real, 0, 0)
    real.chmod(0o770)
    with pytest.raises(UnsafeFileError, match=r"real is writable by others \(mode 0770\)"):
        backing.open_root_dir(str(real))
    real.chmod(0o1777)  # sticky: fine to pass through, not to end in
    os.close(backing.open_root_dir(str(real / "pool")))


def test_the_image_is_created_0600_and_never_replaces_a_file(root_dir: tuple[int, Path]) -> None:
    fd, where = root_dir
    backing.create_image(fd, "dsgtest.img", 64 << 20)
    image = where / "dsgtest.img"
    assert stat.S_IMODE(image.stat().st_mode) == 0o600 and image.stat().st_size == 64 << 20
    assert image.stat().st_blocks == 0  # sparse
    with pytest.raises(FileExistsError):
        backing.create_image(fd, "dsgtest.img", 64 << 20)
    opened = backing.open_image(fd, "dsgtest.img", str(image))
    assert opened is not None
    os.close(opened)
    assert backing.open_image(fd, "missing.img", str(where / "missing.img")) is None


def test_an_existing_image_is_opened_without_links_and_checked(root_dir: tuple[int, Path]) -> None:
    fd, where = root_dir
    image = where / "dsgtest.img"
    backing.create_image(fd, image.name, 1 << 20)
    (where / "link.img").symlink_to(image)
    with pytest.raises(UnsafeFileError, match=r"link.img is a symbolic link: remove it \(rm "):
        backing.open_image(fd, "link.img", str(where / "link.img"))
    os.mkfifo(where / "fifo.img", 0o600)
    with pytest.raises(UnsafeFileError, match="is not a regular file"):  # and no hang opening it
        backing.open_image(fd, "fifo.img", str(where / "fifo.img"))
    os.link(image, where / "second")
    with pytest.raises(UnsafeFileError, match="has 2 links"):
        backing.open_image(fd, image.name, str(image))
    (where / "second").unlink()
    os.chown(image, OTHER, OTHER)
    with pytest.raises(UnsafeFileError, match=f"owned by uid {OTHER}"):
        backing.open_image(fd, image.name, str(image))


def test_the_guid_record_is_written_once_and_read_back_checked(root_dir: tuple[int, Path]) -> None:
    fd, where = root_dir
    image = str(where / "dsgtest.img")
    assert backing.read_record(fd, "dsgtest.img", image) is None
    backing.write_record(fd, "dsgtest.img", "1234567890123456789")
    record = where / "dsgtest.img.guid"
    assert record.read_text() == "1234567890123456789\n" and stat.S_IMODE(record.stat().st_mode) == 0o600
    assert backing.read_record(fd, "dsgtest.img", image) == "1234567890123456789"
    backing.write_record(fd, "dsgtest.img", "42")  # a stale record (its file gone) is replaced
    assert backing.read_record(fd, "dsgtest.img", image) == "42"

    record.write_text("not a guid\n")
    with pytest.raises(UnsafeFileError, match=r"does not hold a pool GUID: remove it"):
        backing.read_record(fd, "dsgtest.img", image)
    record.write_text("42\n")
    record.chmod(0o666)
    with pytest.raises(UnsafeFileError, match="dsgtest.img.guid is writable by others"):
        backing.read_record(fd, "dsgtest.img", image)
    record.unlink()
    (where / "elsewhere").write_text("42\n")
    record.symlink_to(where / "elsewhere")
    with pytest.raises(UnsafeFileError, match="dsgtest.img.guid is a symbolic link"):
        backing.read_record(fd, "dsgtest.img", image)
