"""hostfs on the host: planted symlinks, swapped directories, foreign owners (run as root
for the ownership cases; each case runs through openat2 and through the O_NOFOLLOW walk)."""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dsg_storage import hostfs
from dsg_storage.errors import DsgStorageError, UnsafePathError

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="ownership cases need root (they run in CI as root)")


@pytest.fixture(params=["openat2", "walk"], autouse=True)
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setattr(hostfs, "_openat2_missing", request.param == "walk")
    yield request.param


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """tmp/a/b/file, tmp/secret, tmp/a/up -> .., tmp/a/abs -> tmp/secret, tmp/a/link -> b"""
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "file").write_text("inside\n")
    (tmp_path / "secret").write_text("outside\n")
    (tmp_path / "a" / "up").symlink_to("..")
    (tmp_path / "a" / "abs").symlink_to(tmp_path / "secret")
    (tmp_path / "a" / "link").symlink_to("b")
    return tmp_path


def read_fd(fd: int) -> str:
    with os.fdopen(fd, "rb") as handle:
        return handle.read().decode()


def test_open_beneath_reads_a_file_inside(tree: Path) -> None:
    root = os.open(tree / "a", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert read_fd(hostfs.open_beneath(root, "b/file")) == "inside\n"
    finally:
        os.close(root)


@pytest.mark.parametrize("path", ["up/secret", "abs", "link/file", "../secret", "b/../../secret"])
def test_open_beneath_refuses_links_and_dotdot(tree: Path, path: str) -> None:
    root = os.open(tree / "a", os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(UnsafePathError):
            os.close(hostfs.open_beneath(root, path))
    finally:
        os.close(root)


def test_open_beneath_o_path_of_a_link_is_refused_not_followed(tree: Path) -> None:
    root = os.open(tree / "a", os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(UnsafePathError, match="symbolic link"):
            hostfs.open_beneath(root, "abs", os.O_PATH)
    finally:
        os.close(root)


def test_open_dir_refuses_a_symlink_anywhere(tree: Path) -> None:
    os.close(hostfs.open_dir(str(tree / "a" / "b")))
    with pytest.raises(UnsafePathError):
        hostfs.open_dir(str(tree / "a" / "link"))
    (tree / "via").symlink_to(tree / "a")
    with pytest.raises(UnsafePathError):
        hostfs.open_dir(str(tree / "via" / "b"))


def test_open_dir_missing_is_file_not_found(tree: Path) -> None:
    with pytest.raises(FileNotFoundError):
        hostfs.open_dir(str(tree / "nope" / "x"))


def test_a_directory_swapped_for_a_symlink_after_the_check_changes_nothing(tree: Path) -> None:
    """The fd keeps pointing at the checked directory: mkdir lands there, not in the link's target."""
    parent = tree / "mnt"
    parent.mkdir()
    fd = hostfs.open_dir(str(parent))
    try:
        os.rename(parent, tree / "moved")
        (tree / "etc").mkdir()
        parent.symlink_to(tree / "etc")
        os.close(hostfs.make_mount_dir(fd, "repo"))
    finally:
        os.close(fd)
    assert (tree / "moved" / "repo").is_dir()
    assert list((tree / "etc").iterdir()) == []


def test_make_mount_dir_refuses_a_planted_link(tree: Path) -> None:
    fd = hostfs.open_dir(str(tree))
    try:
        (tree / "repo").symlink_to(tree / "a")
        with pytest.raises(UnsafePathError):
            hostfs.make_mount_dir(fd, "repo")
        with pytest.raises(UnsafePathError):
            hostfs.remove_mount_dir(fd, "repo")
        assert (tree / "repo").is_symlink()
        os.close(hostfs.make_mount_dir(fd, "new"))
        assert hostfs.remove_mount_dir(fd, "new") is True
        assert hostfs.remove_mount_dir(fd, "new") is False
    finally:
        os.close(fd)


@needs_root
def test_check_mount_parent_trusts_only_roots_directories(tmp_path: Path) -> None:
    base = tmp_path / "srv"
    base.mkdir(mode=0o755)
    fd, name = hostfs.check_mount_parent(str(base / "repo"))
    os.close(fd)
    assert name == "repo"

    users = base / "alice"
    users.mkdir()
    os.chown(users, NOBODY, NOBODY)
    with pytest.raises(UnsafePathError, match="owned by uid 65534"):
        hostfs.check_mount_parent(str(users / "repo"))
    with pytest.raises(UnsafePathError, match="owned by uid 65534"):
        hostfs.check_mount_parent(str(users / "deeper" / "repo"))

    shared = base / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(UnsafePathError, match="writable by others"):
        hostfs.check_mount_parent(str(shared / "repo"))

    sticky = base / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    (sticky / "rootsdir").mkdir(mode=0o755)
    with pytest.raises(UnsafePathError, match="writable by others"):
        hostfs.check_mount_parent(str(sticky / "repo"))  # anyone may plant 'repo' there
    os.close(hostfs.check_mount_parent(str(sticky / "rootsdir" / "repo"))[0])  # passing through is fine


def test_chown_root_refuses_a_directory_that_is_not_zfs(tmp_path: Path) -> None:
    fd = hostfs.open_dir(str(tmp_path))
    try:
        with pytest.raises(UnsafePathError, match="not a ZFS filesystem"):
            hostfs.chown_root(fd, "tank/x", 0, 0, 0o755)
        assert hostfs.fs_magic(fd) != hostfs.ZFS_SUPER_MAGIC
    finally:
        os.close(fd)


def test_private_dir_creates_0700_and_narrows_a_wider_one(tmp_path: Path) -> None:
    os.close(hostfs.private_dir(str(tmp_path / "x" / "locks")))
    assert stat.S_IMODE((tmp_path / "x" / "locks").stat().st_mode) == 0o700
    (tmp_path / "wide").mkdir(mode=0o755)
    os.close(hostfs.private_dir(str(tmp_path / "wide")))
    assert stat.S_IMODE((tmp_path / "wide").stat().st_mode) == 0o700


def test_private_dir_refuses_a_link_and_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(UnsafePathError):
        hostfs.private_dir(str(tmp_path / "link"))
    with pytest.raises(UnsafePathError):
        hostfs.private_dir(str(tmp_path / "link" / "locks"))
    if os.geteuid() == 0:
        (tmp_path / "theirs").mkdir()
        os.chown(tmp_path / "theirs", NOBODY, NOBODY)
        with pytest.raises(UnsafePathError):
            hostfs.private_dir(str(tmp_path / "theirs"))
        with pytest.raises(UnsafePathError):
            hostfs.private_dir(str(tmp_path / "theirs" / "locks"))


def test_private_file_is_0600_and_never_a_link_or_a_hard_link(tmp_path: Path) -> None:
    dirfd = hostfs.private_dir(str(tmp_path / "state"))
    try:
        os.close(hostfs.private_file(dirfd, "a.lock"))
        assert stat.S_IMODE((tmp_path / "state" / "a.lock").stat().st_mode) == 0o600
        os.close(hostfs.private_file(dirfd, "a.lock"))  # opening it again is fine
        (tmp_path / "victim").write_text("x")
        (tmp_path / "state" / "b.lock").symlink_to(tmp_path / "victim")
        with pytest.raises(UnsafePathError):
            hostfs.private_file(dirfd, "b.lock")
        os.link(tmp_path / "victim", tmp_path / "state" / "c.lock")
        with pytest.raises(UnsafePathError):
            hostfs.private_file(dirfd, "c.lock")
        assert (tmp_path / "victim").read_text() == "x"
    finally:
        os.close(dirfd)


def test_output_file_replaces_only_when_asked_and_never_through_a_link(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    with hostfs.OutputFile(target, replace=False) as out:
        os.write(out.fd, b"one")
    assert target.read_text() == "one"
    with pytest.raises(FileExistsError), hostfs.OutputFile(target, replace=False) as out:
        os.write(out.fd, b"two")
    assert target.read_text() == "one"
    victim = tmp_path / "victim"
    victim.write_text("precious")
    link = tmp_path / "link.txt"
    link.symlink_to(victim)
    with pytest.raises(FileExistsError):
        hostfs.OutputFile(link, replace=False).open()
    with hostfs.OutputFile(link) as out:  # replace: the link itself is replaced
        os.write(out.fd, b"new")
    assert victim.read_text() == "precious" and not link.is_symlink() and link.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.txt", "out.txt", "victim"]


def test_output_file_discards_its_partial_on_failure(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), hostfs.OutputFile(tmp_path / "out"):
        raise RuntimeError("export failed")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def world_tmp() -> Iterator[Path]:
    """A directory others can traverse (pytest's tmp_path is under a 0700 one)."""
    path = Path(tempfile.mkdtemp(prefix="dsg-hostfs-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@needs_root
def test_output_file_as_the_invoking_user_is_theirs_and_only_where_they_may_write(world_tmp: Path) -> None:
    tmp_path = world_tmp
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    with hostfs.OutputFile(home / "b.dsgb", replace=False, owner=(NOBODY, NOBODY)) as out:
        os.write(out.fd, b"data")
    st = (home / "b.dsgb").stat()
    assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY)
    assert os.geteuid() == 0 and os.getegid() == 0
    with pytest.raises(PermissionError):
        hostfs.OutputFile(tmp_path / "roots.txt", owner=(NOBODY, NOBODY)).open()
    (home / "etc").symlink_to(tmp_path)
    with pytest.raises(UnsafePathError):
        hostfs.OutputFile(home / "etc" / "x", owner=(NOBODY, NOBODY)).open()


def test_state_file_modes_in_a_queue_and_a_cache(tmp_path: Path) -> None:
    from dsg_storage import Queue, ReadCache

    with Queue(tmp_path / "state" / "q.sqlite") as queue:
        queue.add_snapshot("tank/a@s")
    cache = ReadCache(tmp_path / "cache" / "c.sqlite")
    cache.record("history", "tank/a", [])
    cache.close()
    (tmp_path / "home").mkdir(mode=0o755)
    ReadCache(tmp_path / "home" / "c.sqlite").close()
    assert stat.S_IMODE((tmp_path / "home").stat().st_mode) == 0o755  # a user's own place keeps its mode
    assert stat.S_IMODE((tmp_path / "home" / "c.sqlite").stat().st_mode) == 0o600
    (tmp_path / "home").chmod(0o777)
    with pytest.raises(UnsafePathError, match="writable by others"):
        ReadCache(tmp_path / "home" / "d.sqlite")
    for path in (tmp_path / "state", tmp_path / "cache"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
        for file in path.iterdir():
            assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafePathError):
        Queue(tmp_path / "link" / "q.sqlite")


def test_a_planted_link_at_a_repository_lock_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dsg_storage.core.lock import ENV_VAR, repository_lock

    monkeypatch.setenv(ENV_VAR, str(tmp_path / "locks"))
    with repository_lock("tank/a"):
        pass
    assert stat.S_IMODE((tmp_path / "locks" / "tank%a.lock").stat().st_mode) == 0o600
    victim = tmp_path / "victim"
    victim.write_text("x")
    (tmp_path / "locks" / "tank%b.lock").symlink_to(victim)
    with pytest.raises(UnsafePathError), repository_lock("tank/b"):
        pass
    assert victim.read_text() == "x"


def test_a_private_copy_is_unnamed_ours_and_does_not_follow_the_original(tmp_path: Path) -> None:
    original = tmp_path / "bundle.dsgb"
    original.write_bytes(b"checked bytes" * 1000)
    fd = os.open(original, os.O_RDONLY)
    try:
        with hostfs.private_copy(fd, str(tmp_path)) as copy:
            original.write_bytes(b"swapped")  # what its owner could do meanwhile
            st = os.fstat(copy)
            assert st.st_nlink == 0 and st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o600
            assert os.read(copy, 1 << 20) == b"checked bytes" * 1000
            with pytest.raises(OSError):
                os.write(copy, b"x")  # read-only: and with no writer left, a read lease can be had
            fcntl.fcntl(copy, fcntl.F_SETLEASE, fcntl.F_RDLCK)
            fcntl.fcntl(copy, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle.dsgb"]
    finally:
        os.close(fd)


def test_a_private_copy_that_cannot_be_made_is_a_clear_error(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)  # sendfile cannot read a directory
    try:
        for directory in (str(tmp_path), "/nonexistent"):
            with pytest.raises(DsgStorageError, match=f"cannot make a private copy in {directory}"):  # noqa: SIM117
                with hostfs.private_copy(fd, directory):
                    pass
    finally:
        os.close(fd)


def test_a_private_copy_is_bounded_before_a_byte_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue #23: a sparse file costs its owner nothing and root its whole size; a file
    over the policy's size, or one that would fill the directory, is refused at once."""
    copies = tmp_path / "copies"
    copies.mkdir()
    sparse = tmp_path / "sparse.dsgb"
    with open(sparse, "wb") as f:
        f.truncate(1 << 30)
    dense = tmp_path / "dense.dsgb"
    dense.write_bytes(b"x" * 100_000)
    for path, limit, refusal in (
        (sparse, None, "sparse"),
        (dense, 99_999, "larger than the 99,999 allowed"),
    ):
        fd = os.open(path, os.O_RDONLY)
        try:
            with pytest.raises(DsgStorageError, match=refusal):  # noqa: SIM117
                with hostfs.private_copy(fd, str(copies), max_size=limit):
                    pass
        finally:
            os.close(fd)
    fd = os.open(dense, os.O_RDONLY)
    try:
        with hostfs.private_copy(fd, str(copies), max_size=100_000) as copy:
            assert os.pread(copy, 200_000, 0) == b"x" * 100_000
        monkeypatch.setattr(hostfs, "COPY_MARGIN", 1 << 62)  # more than any disk has free
        with pytest.raises(DsgStorageError, match="free"):  # noqa: SIM117
            with hostfs.private_copy(fd, str(copies)):
                pass
    finally:
        os.close(fd)
    assert list(copies.iterdir()) == []  # nothing named was ever left


def test_an_output_removes_its_stale_signature_in_the_directory_it_checked(tmp_path: Path) -> None:
    """Issue #23: root removed OUTPUT.sig by path, so a caller who swapped the directory
    for a link after the output was opened could have root delete any ``*.sig``."""
    mine, other = tmp_path / "mine", tmp_path / "other"
    mine.mkdir()
    other.mkdir()
    (other / "b.dsgb.sig").write_text("someone else's")
    (mine / "b.dsgb.sig").write_text("stale")
    out = hostfs.OutputFile(mine / "b.dsgb")
    out.open()
    try:
        moved = tmp_path / "moved"
        mine.rename(moved)
        mine.symlink_to(other)  # swapped after the check
        out.remove_beside(".sig")
    finally:
        out.discard()
    assert (other / "b.dsgb.sig").read_text() == "someone else's"
    assert not (moved / "b.dsgb.sig").exists()


@needs_root
def test_check_root_only_follows_a_last_link_only_where_root_alone_writes(tmp_path: Path) -> None:
    """tmp/bin/python -> tool (root's): fine; anything a user could change on the way is refused."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(mode=0o755)
    (bin_dir / "tool").write_text("#!/bin/true\n")
    (bin_dir / "tool").chmod(0o755)
    (bin_dir / "python").symlink_to("tool")
    assert hostfs.check_root_only(str(bin_dir / "python"))[0] == str(bin_dir / "tool")
    assert hostfs.check_root_only(str(bin_dir))[0] == str(bin_dir)

    (tmp_path / "via").symlink_to(bin_dir)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        hostfs.check_root_only(str(tmp_path / "via" / "tool"))  # a link before the last component
    (bin_dir / "up").symlink_to("../bin/tool")
    with pytest.raises(UnsafePathError, match="'..'"):
        hostfs.check_root_only(str(bin_dir / "up"))

    users = tmp_path / "users"
    users.mkdir(mode=0o755)
    (users / "tool").write_text("")
    os.chown(users / "tool", NOBODY, NOBODY)
    with pytest.raises(UnsafePathError, match="owned by uid 65534"):
        hostfs.check_root_only(str(users / "tool"))
    (bin_dir / "theirs").symlink_to(users / "tool")  # a root link to a user's file
    with pytest.raises(UnsafePathError, match="owned by uid 65534"):
        hostfs.check_root_only(str(bin_dir / "theirs"))
    (users / "tool").chmod(0o666)
    os.chown(users / "tool", 0, 0)
    with pytest.raises(UnsafePathError, match="writable by others"):
        hostfs.check_root_only(str(users / "tool"))
    users.chmod(0o777)
    (users / "tool").chmod(0o755)
    with pytest.raises(UnsafePathError, match="writable by others"):
        hostfs.check_root_only(str(users / "tool"))  # a user could rename it away and plant another
    with pytest.raises(FileNotFoundError):
        hostfs.check_root_only(str(bin_dir / "missing"))


def test_private_path_leaves_this_processs_locks_on_an_open_database_alone(tmp_path: Path) -> None:
    """Closing any descriptor of a file drops every POSIX lock the process holds on it:
    a second Queue in a process whose first one is in a transaction must not let another
    process write meanwhile (SQLite's locks are POSIX locks)."""
    import sqlite3
    import subprocess
    import sys

    state = tmp_path / "state"
    db_path = hostfs.private_path(state / "q.sqlite")
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")  # a RESERVED lock on the database file
    try:
        assert hostfs.private_path(db_path) == db_path  # e.g. a second Queue on the same file
        other = subprocess.run(
            [
                sys.executable,
                "-c",
                f"import sqlite3; sqlite3.connect({db_path!r}, timeout=0).execute('BEGIN IMMEDIATE')",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert other.returncode != 0 and "locked" in other.stderr, other.stderr
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_absolute_path_is_the_form_every_check_compares() -> None:
    assert hostfs.absolute_path("//srv/./repos//a/") == "/srv/repos/a"
    with pytest.raises(DsgStorageError, match="not an absolute path"):
        hostfs.absolute_path("srv/repos")
    with pytest.raises(UnsafePathError):
        hostfs.absolute_path("/srv/repos/../etc")
