"""Extended attributes in file answers: the user namespace only, bounded the same way
for every kind of reader, and read from the file itself, never through a link."""

from __future__ import annotations

import os
from pathlib import Path

from dsg_storage.read import xattrs
from dsg_storage.read.xattrs import MAX_XATTR_BYTES, MAX_XATTRS, bounded, linux_name, read_at


def test_only_user_attributes_are_shown_in_name_order() -> None:
    shown, omitted = bounded([("user.b", b"2"), ("trusted.x", b"t"), ("user.a", b"1"), ("security.selinux", b"s")])
    assert shown == (("user.a", b"1"), ("user.b", b"2")) and omitted == 0


def test_past_the_bounds_attributes_are_counted_not_shown() -> None:
    many = [(f"user.n{i:03}", b"v") for i in range(MAX_XATTRS + 5)]
    shown, omitted = bounded(many)
    assert len(shown) == MAX_XATTRS and omitted == 5 and shown[0][0] == "user.n000"
    big = [("user.a", b"x" * (MAX_XATTR_BYTES - 1)), ("user.b", b"yy"), ("user.c", b"")]
    assert bounded(big) == ((("user.a", b"x" * (MAX_XATTR_BYTES - 1)),), 2)
    unreadable = [("user.a", None), ("user.b", b"ok")]
    assert bounded(unreadable) == ((("user.b", b"ok"),), 1)


def test_names_stored_without_a_namespace_are_the_users() -> None:
    assert linux_name("note") == "user.note"
    assert linux_name("user.note") == "user.note" and linux_name("trusted.x") == "trusted.x"


def test_a_files_attributes_are_read_beneath_its_directory(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    os.setxattr(tmp_path / "f", "user.note", b"hello")
    os.symlink("f", tmp_path / "link")
    os.setxattr(tmp_path, "user.top", b"dir")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert read_at(fd, "f") == ((("user.note", b"hello"),), 0)
        assert read_at(fd, "link") == ((), 0)  # the link's own, never its target's
        assert read_at(fd, "") == ((("user.top", b"dir"),), 0)
    finally:
        os.close(fd)
    assert xattrs.to_json((("user.note", b"hello"),)) == {"user.note": "aGVsbG8="}
