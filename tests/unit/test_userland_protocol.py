"""The userland reader's protocol, catalog and client, without ZFS: the helper is a fake
script speaking (or breaking) the protocol. Real pools: tests/host/test_userland.py."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from dsg_storage.errors import DsgStorageError, PoolForeignError
from dsg_storage.read.userland import protocol
from dsg_storage.read.userland.catalog import PoolCatalog, mountpoint, own_user_props
from dsg_storage.read.userland.client import (
    WINDOW,
    Helper,
    HelperCrashedError,
    HelperRequestError,
    HelperTimeoutError,
)
from dsg_storage.read.userland.provision import HELPER
from dsg_storage.read.userland.reader import _choose, entry_of
from dsg_storage.read.xattrs import linux_name

SEED = 26


def fake_helper(tmp_path: Path, body: str) -> list[str]:
    """argv of a helper whose reply to each request is ``body`` (Python, with ``req``, ``out``
    and ``win``, the shared window file bytes go into); it maps the window as ours does."""
    script = tmp_path / "fake_helper.py"
    script.write_text(
        "import json, mmap, os, sys\n"
        "out = sys.stdout.buffer\n"
        'out.write(b\'{"hello": 2, "pid": 7}\\n\'); out.flush()\n'
        "for line in sys.stdin.buffer:\n"
        "    req = json.loads(line)\n"
        '    if req["op"] == "window":\n'
        '        win = mmap.mmap(req["fd"], req["size"])\n'
        '        out.write(b\'{"ok": true, "result": 0}\\n\'); out.flush(); continue\n'
        + textwrap.indent(textwrap.dedent(body), "    ")
        + "    out.flush()\n"
    )
    return [sys.executable, str(script)]


def test_a_request_gets_its_result(tmp_path: Path) -> None:
    helper = Helper(
        fake_helper(tmp_path, 'out.write(json.dumps({"ok": True, "result": req["op"]}).encode() + b"\\n")\n')
    )
    assert helper.pid == 7
    assert helper.call("find", paths=["/x"]) == "find"
    helper.close()


def test_an_error_reply_carries_its_errno(tmp_path: Path) -> None:
    helper = Helper(fake_helper(tmp_path, 'out.write(b\'{"ok": false, "errno": 52, "error": "checksum"}\\n\')\n'))
    with pytest.raises(HelperRequestError) as caught:
        helper.call("read")
    assert caught.value.code == 52
    helper.close()


def test_file_bytes_come_through_the_window(tmp_path: Path) -> None:
    body = 'win[: req["length"]] = b"abcde"[: req["length"]]; out.write(b\'{"ok": true, "result": 5}\\n\')\n'
    helper = Helper(fake_helper(tmp_path, body))
    assert helper.read("pool/ds", 5, 0, 5) == b"abcde"
    helper.close()


def test_a_short_read_is_an_error_never_a_short_file(tmp_path: Path) -> None:
    helper = Helper(fake_helper(tmp_path, 'out.write(b\'{"ok": true, "result": 3}\\n\')\n'))
    with pytest.raises(protocol.HelperProtocolError, match="read 3 bytes of the 5"):
        helper.read("pool/ds", 5, 0, 5)
    assert helper.proc.poll() is not None, "the session ends with the protocol broken"
    helper.close()


def test_a_large_read_is_asked_a_window_at_a_time(tmp_path: Path) -> None:
    # each request at most WINDOW bytes, the offsets following on: the bytes land in order
    body = (
        'n, at = req["length"], req["offset"]\n'
        "win[:n] = bytes((at + i) % 251 for i in range(n))\n"
        'out.write(b\'{"ok": true, "result": %d}\\n\' % n)\n'
    )
    helper = Helper(fake_helper(tmp_path, body))
    into = bytearray(WINDOW + 1000)
    assert helper.read_into("pool/ds", 5, 0, memoryview(into)) == len(into)
    assert into == bytes(i % 251 for i in range(len(into)))
    helper.close()


def test_a_walk_streams_batches_of_checked_entries(tmp_path: Path) -> None:
    batch = json.dumps({"entries": [["a", STAT], ["a/b", {**STAT, "obj": 9}]]})
    body = f"out.write({batch!r}.encode() + b'\\n' + b'{{\"ok\": true, \"result\": 2}}\\n')\n"
    helper = Helper(fake_helper(tmp_path, body))
    assert [(path, st["obj"]) for path, st in helper.walk("p/r", 4)] == [("a", 8), ("a/b", 9)]
    helper.close()
    for bad in (
        ["/a", STAT],
        ["a/../b", STAT],
        ["a//b", STAT],
        ["a", {**STAT, "size": -1}],
        ["a", {**STAT, "mtime": [1]}],
    ):
        with pytest.raises(protocol.HelperProtocolError):
            protocol.entries({"entries": [bad]})


def test_a_resolve_reply_must_match_the_paths_depth() -> None:
    found = {"stat": STAT, "depth": 2, "missing": False, "blocked": False}
    assert protocol.resolved(found, 2) == (STAT, False, False)
    with pytest.raises(protocol.HelperProtocolError, match="wrong depth"):
        protocol.resolved({**found, "depth": 1}, 2)
    assert protocol.resolved({**found, "depth": 1, "missing": True}, 2)[1] is True
    for bad in ({**found, "depth": 3}, {**found, "missing": True, "blocked": True}, {**found, "stat": {}}):
        with pytest.raises(protocol.HelperProtocolError):
            protocol.resolved(bad, 2)


def test_a_fetch_is_the_whole_of_a_regular_file_or_nothing() -> None:
    found = {"stat": STAT, "depth": 1, "missing": False, "blocked": False}
    assert protocol.fetched(found, STAT, WINDOW) is None
    assert protocol.fetched({**found, "fetched": 5}, STAT, WINDOW) == 5
    for bad, st in (
        (4, STAT),  # short: never a truncated file taken for whole
        (5, {**STAT, "mode": 0o120777}),  # not a regular file
        (True, STAT),
        (WINDOW + 1, {**STAT, "size": WINDOW + 1}),
    ):
        with pytest.raises(protocol.HelperProtocolError):
            protocol.fetched({**found, "fetched": bad}, st, WINDOW)


def test_the_helper_orders_xattrs_by_the_names_the_parent_shows() -> None:
    # the helper (a script that imports nothing of ours) leaves out what the parent would
    spec = importlib.util.spec_from_file_location("userland_helper", HELPER)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    for name in ("note", "user.note", "trusted.t", "security.selinux", "system.posix_acl_access", "usernote", "x.y"):
        assert script.linux_name(name) == linux_name(name), name


def test_a_crash_is_our_error_with_the_helpers_last_words(tmp_path: Path) -> None:
    helper = Helper(
        fake_helper(tmp_path, 'sys.stderr.write("VERIFY failed: boom\\n"); sys.stderr.flush(); os.abort()\n')
    )
    with pytest.raises(HelperCrashedError, match=r"VERIFY failed: boom") as caught:
        helper.call("datasets", under="p")
    assert isinstance(caught.value, DsgStorageError) and "signal 6" in caught.value.message
    with pytest.raises(HelperCrashedError, match="gone"):
        helper.call("datasets", under="p")
    helper.close()


def test_a_silent_helper_is_stopped_at_its_deadline(tmp_path: Path) -> None:
    # the hello has the default time (a loaded machine starts Python slowly); the request 1 s
    helper = Helper(fake_helper(tmp_path, "import time; time.sleep(60)\n"))
    started = time.monotonic()
    with pytest.raises(HelperTimeoutError, match="did not answer within 1s"):
        helper.call("walk", timeout=1.0)
    assert time.monotonic() - started < 10
    assert helper.proc.poll() is not None, "the helper was left running"
    helper.close()


def test_a_helper_that_cannot_start_is_our_error(tmp_path: Path) -> None:
    with pytest.raises(HelperCrashedError, match="could not be started"):
        Helper([str(tmp_path / "missing")])


def test_garbage_instead_of_hello_is_refused(tmp_path: Path) -> None:
    script = tmp_path / "h.py"
    script.write_text("import sys; sys.stdout.write('hello world\\n'); sys.stdout.flush(); sys.stdin.read()\n")
    with pytest.raises(protocol.HelperProtocolError):
        Helper([sys.executable, str(script)])


STAT = {
    "obj": 8,
    "mode": 0o100644,
    "size": 5,
    "uid": 1000,
    "gid": 1000,
    "links": 1,
    "atime": [1, 2],
    "mtime": [3, 4],
    "ctime": [5, 6],
}


def test_entries_are_made_from_checked_stats() -> None:
    link = {**STAT, "mode": 0o120777, "symlink": b"sub/x".hex()}
    assert entry_of("a", protocol.stat_record(STAT)).mtime_ns == 3_000_000_004
    # xattrs as ZFS stores them: with their namespace, or without (Solaris-style: user's)
    tagged = {**STAT, "xattrs": [["user.a", b"1".hex()], ["b", ""], ["trusted.t", "00"], ["user.big", None]]}
    entry = entry_of("a", protocol.stat_record(tagged))
    assert entry.xattrs == (("user.a", b"1"), ("user.b", b"")) and entry.xattrs_omitted == 1
    with pytest.raises(protocol.HelperProtocolError, match="xattrs"):
        protocol.stat_record({**STAT, "xattrs": [["user.a", "zz"]]})
    assert entry_of("l", protocol.stat_record(link)).target == "sub/x"
    assert entry_of("l", protocol.stat_record(link)).type == "symlink"


def test_the_catalog_keeps_own_and_received_properties_only() -> None:
    props = {
        "dsg-storage:owner": {"value": "1000:1000", "source": "p/r"},
        "dsg-storage:mode": {"value": "0750", "source": "p"},
        "dsg-storage:tx": {"value": "t", "source": "$recvd"},
    }
    assert own_user_props("p/r", props) == {"dsg-storage:owner": "1000:1000", "dsg-storage:tx": "t"}
    assert mountpoint("p/r/s", {"mountpoint": {"value": "/srv", "source": "p/r"}}) == "/srv/s"
    assert mountpoint("p/r", {}) == "/p/r"
    assert mountpoint("p/r", {"mountpoint": {"value": "none", "source": "p"}}) == "none"
    catalog = PoolCatalog(
        [
            {"name": "p/r", "objset_type": 2, "props": props},
            {
                "name": "p/r@b",
                "objset_type": 2,
                "props": {"guid": {"value": 9}, "createtxg": {"value": 20}, "creation": {"value": 1}},
            },
            {
                "name": "p/r@a",
                "objset_type": 2,
                "props": {"guid": {"value": 8}, "createtxg": {"value": 10}, "creation": {"value": 1}},
            },
        ]
    )
    assert [s.short_name for s in catalog.snapshots("p/r")] == ["a", "b"]
    assert set(catalog.filesystems("p")) == {"p/r"}


def test_a_pool_marked_active_is_refused_unless_forced() -> None:
    active = {"name": "tank", "pool_guid": 5, "state": 0, "hostid": 0xABC, "hostname": "elsewhere"}
    with pytest.raises(PoolForeignError, match=r"ACTIVE\) by elsewhere \(hostid 0xabc\)"):
        _choose([active], None, ["/x"], force=False)
    assert _choose([active], None, ["/x"], force=True) is active
    assert _choose([{**active, "state": 1}], "5", ["/x"], force=False)["name"] == "tank"


# ---------------------------------------------------------------------- fuzzing
def _mutations(rng: random.Random, line: bytes) -> bytes:
    pick = rng.randrange(5)
    if pick == 0 and line:
        i = rng.randrange(len(line))
        return line[:i] + bytes([rng.randrange(256)]) + line[i + 1 :]
    if pick == 1:
        return line[: rng.randrange(len(line) + 1)]
    if pick == 2:
        return json.dumps(rng.choice([2**64, -1, "x" * 1000, [[[[]]]], None, True, 1.5, {"a": {}}])).encode()
    if pick == 3:
        return b"[" * 100_000 + b"]" * 100_000
    return line.replace(b"1", str(rng.choice([2**70, -5, 0])).encode())


def _check_all(message: dict[str, Any]) -> None:
    for check in (protocol.hello, protocol.outcome, protocol.entries, protocol.stat_record,
                  protocol.dataset_records, protocol.pool_configs):  # fmt: skip
        try:
            check(message)  # type: ignore[operator]
        except protocol.HelperProtocolError:
            pass  # refused: what the test wants of bad input
        try:
            for found in protocol.entries(message) or []:
                entry_of(*found)  # a stat that passed the checks always makes an entry
        except protocol.HelperProtocolError:
            pass
        for value in message.values():
            try:
                protocol.resolved(value, 2)
                if isinstance(value, dict):
                    protocol.fetched(value, STAT, WINDOW)
            except protocol.HelperProtocolError:
                pass
            try:
                protocol.stat_record(value)
                protocol.dataset_records(value)
                protocol.pool_configs(value)
            except protocol.HelperProtocolError:
                pass  # likewise


def test_fuzzed_helper_lines_are_refused_cleanly() -> None:
    rng = random.Random(SEED)
    sound = [
        b'{"hello": 2, "pid": 7}',
        json.dumps({"ok": True, "result": [{"name": "p", "pool_guid": 1, "state": 1, "hostid": 0}]}).encode(),
        json.dumps(
            {"entries": [["a/b", STAT], ["a/c", {**STAT, "xattrs": [["user.n", "6869"], ["x", None]]}]]}
        ).encode(),
        json.dumps({"ok": True, "result": {"stat": STAT, "depth": 1, "missing": False, "blocked": False}}).encode(),
        json.dumps(
            {"ok": True, "result": {"stat": STAT, "depth": 1, "missing": False, "blocked": False, "fetched": 5}}
        ).encode(),
        json.dumps({"ok": True, "result": [{"name": "p/r", "objset_type": 2, "props": {}}]}).encode(),
        b'{"ok": false, "errno": 52, "error": "checksum"}',
    ]
    for iteration in range(3000):
        line = _mutations(rng, rng.choice(sound))
        try:
            message = protocol.parse(line)
        except protocol.HelperProtocolError:
            continue
        except Exception as exc:  # pragma: no cover - the failure the test exists for
            raise AssertionError(f"seed {SEED} iteration {iteration}: {line[:80]!r} raised {exc!r}") from exc
        try:
            _check_all(message)
        except Exception as exc:  # pragma: no cover
            raise AssertionError(f"seed {SEED} iteration {iteration}: {line[:80]!r} raised {exc!r}") from exc
