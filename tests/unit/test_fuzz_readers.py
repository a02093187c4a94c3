"""Seeded fuzzing of the readers of outside files: a mutated bundle, lock file or sudo
policy file either reads or is refused with one of our errors (``DsgStorageError``), never another
exception, never a hang, never a large allocation.

Each test starts from a sound file (a crafted repository bundle, ``tests/craft.py``; a
lock file from ``lockfile.dumps``) and mutates it in a loop driven by
``random.Random(SEED)``: byte flips, truncations, insertions and deletions; big
integers (up to 2**64 and past it) in the length and offset fields; and, with every
checksum and the structure hash recomputed so that the parsers behind them are
reached, hostile JSON values (big and negative numbers, lone surrogates, control
characters, other scripts' digits, deep nesting, long strings) and hostile BEGIN
records. A failure names the seed, the iteration and the mutation, so it reproduces.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import random
import signal
import struct
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from dsg_storage.cli import bundle_text
from dsg_storage.cli.bundles import bundle_json as _bundle_json
from dsg_storage.cli.commands import main as cli_main
from dsg_storage.core.options import Owner
from dsg_storage.errors import DsgStorageError, NotAllowedError
from dsg_storage.policy import SudoPolicy
from dsg_storage.present import shown
from dsg_storage.transfer import check, reader, sendstream
from dsg_storage.transfer import lockfile as lf
from tests import craft

SEED = 20261203
BUNDLE_ROUNDS = 600
LOCK_ROUNDS = 2000
CLI_EVERY = 10  # one bundle in CLI_EVERY is read through the command line too
PER_INPUT_SECONDS = 10  # a hang is a failure, not a stuck test run
PEAK_BYTES = 16 << 20  # what the readers may allocate for these small inputs (Python's allocations)

REPO = "tank/data/src"
SNAPS = [("s1", 101), ("s2", 102)]
BIGS = [2**31, 2**32, 2**40, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**64 + 1, 10**30]
HOSTILE: list[Any] = [
    *BIGS,
    -1,
    -(2**63),
    0,
    1.5,
    1e308,
    True,
    None,
    "",
    "\ud800",
    "x\udfffy",
    "\x1b[31m\x9b2J",
    "a\nb",
    "\u0661\u0662",  # Arabic-Indic digits
    "18446744073709551616",
    "-1",
    "9" * 30,
    "s" * 70_000,
    [],
    {},
    [1, "a"],
    {"\ud800": 1},
    json.loads("[" * 40 + "]" * 40),
    json.loads('{"a":' * 40 + "1" + "}" * 40),
]


class Hung(Exception):
    """A reader took longer than PER_INPUT_SECONDS over one input."""


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Raise ``Hung`` in this (the main) thread when ``seconds`` pass; a blocked read or
    wait is interrupted by the signal. Needs the main thread: fails, never skips, if not."""
    assert threading.current_thread() is threading.main_thread(), "the deadline needs SIGALRM in the main thread"

    def expire(signum: int, frame: FrameType | None) -> None:
        raise Hung(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def allocation_peak() -> Iterator[list[int]]:
    """The peak of Python's allocations inside, in bytes (one item, set on leaving)."""
    peak: list[int] = []
    tracemalloc.start()
    try:
        yield peak
    finally:
        peak.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()


# ---------------------------------------------------------------------------- JSON mutations
def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON document, the root included."""
    found = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            found += paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            found += paths(value, (*prefix, index))
    return found


def mutate_json(rng: random.Random, doc: Any) -> tuple[Any, str]:
    """A copy of ``doc`` with one place replaced, removed or added to; and what was done."""
    doc = copy.deepcopy(doc)
    where = rng.choice(paths(doc))
    value = copy.deepcopy(rng.choice(HOSTILE))
    if not where:
        return value, f"the whole document replaced by {short(value)}"
    parent = doc
    for key in where[:-1]:
        parent = parent[key]
    last = where[-1]
    action = rng.random()
    if action < 0.7:
        parent[last] = value
        return doc, f"{where} = {short(value)}"
    if action < 0.85:
        del parent[last]
        return doc, f"{where} removed"
    if isinstance(parent, dict):
        parent[rng.choice(["extra", "\ud800", "index", "size", "offset"])] = value
    else:
        parent.insert(rng.randrange(len(parent) + 1), value)
    return doc, f"{short(value)} added beside {where}"


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 60 else f"{text[:57]}..."


def dumps(value: Any) -> bytes:
    # ensure_ascii: a lone surrogate is written as its \\ud800 escape, as a forger would
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()


def mutate_text(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """Byte-level damage to JSON text, aimed at what a JSON reader trips on."""
    at = rng.randrange(len(data) + 1)
    pieces = [
        b'"\\ud800"',
        b"\\ud800",
        b"\\u0000",
        b"[" * 5000,
        b"{" * 100,
        b"1" * 5000,
        b"-",
        b"1e999999",
        b"NaN",
        b"\xff\xfe",
        b"\xed\xa0\x80",  # a surrogate encoded as UTF-8: not UTF-8
        b"\x00",
        b'"',
        b",",
        bytes([rng.randrange(256)]),
    ]
    piece = rng.choice(pieces)
    if rng.random() < 0.5:
        return data[:at] + piece + data[at:], f"{short(piece)} inserted at byte {at}"
    return data[:at] + piece + data[at + len(piece) :], f"{short(piece)} written over byte {at}"


# ---------------------------------------------------------------------------- bundles
def sound_parts() -> tuple[dict[str, Any], list[dict[str, Any]], list[bytes]]:
    meta = craft.metadata(REPO, SNAPS)
    meta["snapshots"][1]["user_props"] = {"dsg-storage:message": "a message"}
    infos = craft.part_infos(SNAPS)
    streams = [craft.fake_stream(f"{REPO}@s1", 101, 0, size=600), craft.fake_stream(f"{REPO}@s2", 102, 101, size=400)]
    return meta, infos, streams


def raw_bundle(
    tmp: Path,
    meta: bytes,
    infos: list[bytes],
    streams: list[bytes],
    trailer_parts: list[dict[str, Any]] | None = None,
) -> bytes:
    path = craft.write_raw(
        tmp / "build.dsgb", meta, list(zip(infos, streams, strict=True)), trailer_parts=trailer_parts
    )
    return path.read_bytes()


def trailer_record(raw: bytes) -> tuple[int, bytes]:
    """The trailer's offset (from the footer) and its JSON payload."""
    at = struct.unpack(">Q", raw[-16:-8])[0]
    _, length = struct.unpack(">cQ", raw[at : at + 9])
    return at, raw[at + 9 : at + 9 + length]


def with_trailer(raw: bytes, payload: bytes) -> bytes:
    """``raw`` with another trailer, its checksum right (the structure hash leaves it out)."""
    at, _ = trailer_record(raw)
    head = struct.pack(">cQ", b"T", len(payload))
    return raw[:at] + head + payload + hashlib.sha256(head + payload).digest() + raw[-16:]


def trailer_entries(raw: bytes, tmp: Path) -> list[dict[str, Any]]:
    path = tmp / "entries.dsgb"
    path.write_bytes(raw)
    return [
        {"index": p.index, "info": dict(p.info), "size": p.size, "digest": p.digest, "offset": p.offset}
        for p in reader.inspect(path).parts
    ]


BYTE_DAMAGE = ("flip", "truncate", "insert")


def byte_damage(rng: random.Random, sound: bytes, kind: str, *, spots: int, insert: int) -> tuple[bytes, str]:
    """Damage that knows nothing of the format: up to ``spots`` bytes flipped, a
    truncation, or up to ``insert`` random bytes inserted; and what it was."""
    if kind == "flip":
        data = bytearray(sound)
        where = [rng.randrange(len(data)) for _ in range(rng.randint(1, spots))]
        for at in where:
            data[at] ^= rng.randrange(1, 256)
        return bytes(data), f"bytes flipped at {where}"
    if kind == "truncate":
        at = rng.randrange(len(sound))
        return sound[:at], f"truncated to {at} bytes"
    at, extra = rng.randrange(len(sound) + 1), rng.randbytes(rng.randint(1, insert))
    return sound[:at] + extra + sound[at:], f"{extra!r} inserted at {at}"


def mutated_bundle(  # noqa: C901, PLR0912  one branch per kind of damage
    rng: random.Random, sound: bytes, tmp: Path
) -> tuple[bytes, str]:
    """One mutation of the sound bundle, and what it was."""
    meta, infos, streams = sound_parts()
    kind = rng.choice(
        ["flip", "truncate", "insert", "delete", "big length", "footer", "version", "metadata", "metadata text"]
        + ["part info", "trailer", "stream"]
    )
    if kind in BYTE_DAMAGE:
        return byte_damage(rng, sound, kind, spots=4, insert=64)
    if kind == "delete":
        at = rng.randrange(len(sound))
        size = rng.randint(1, 64)
        return sound[:at] + sound[at + size :], f"{size} bytes deleted at {at}"
    if kind == "big length":
        rtype, at, _ = rng.choice(craft.records(sound))
        big = rng.choice([*BIGS[:-3], 0, 1])
        return sound[: at + 1] + struct.pack(">Q", big) + sound[
            at + 9 :
        ], f"{rtype!r} record at {at} claims {big} bytes"
    if kind == "footer":
        big = rng.choice([*BIGS[:-3], 0, 12, len(sound) - 16, len(sound)])
        return sound[:-16] + struct.pack(">Q", big) + sound[-8:], f"footer points at {big}"
    if kind == "version":
        version = rng.choice([0, 2, 2**31, 2**32 - 1])
        return sound[:8] + struct.pack(">I", version) + sound[12:], f"format version {version}"
    raw_infos = [craft.dumps(i) for i in infos]
    if kind == "metadata":
        changed, what = mutate_json(rng, meta)
        return raw_bundle(tmp, dumps(changed), raw_infos, streams), f"metadata: {what}"
    if kind == "metadata text":
        text, what = mutate_text(rng, craft.dumps(meta))
        return raw_bundle(tmp, text, raw_infos, streams, trailer_entries(sound, tmp)), f"metadata text: {what}"
    if kind == "part info":
        index = rng.randrange(len(infos))
        changed, what = mutate_json(rng, infos[index])
        raw_infos[index] = dumps(changed)
        listed = trailer_entries(sound, tmp)
        if rng.random() < 0.5:  # the trailer agrees with the lie, or not
            listed[index]["info"] = changed
        return raw_bundle(tmp, craft.dumps(meta), raw_infos, streams, listed), f"part {index} info: {what}"
    if kind == "trailer":
        changed, what = mutate_json(rng, json.loads(trailer_record(sound)[1]))
        return with_trailer(sound, dumps(changed)), f"trailer: {what}"
    # stream: a hostile BEGIN record, every digest right
    index = rng.randrange(len(streams))
    begin = bytearray(streams[index][: sendstream.RECORD_SIZE])
    field, size = rng.choice([(0, 4), (4, 4), (8, 8), (16, 8), (32, 4), (36, 4), (40, 8), (48, 8), (56, 256)])
    if size == 256:
        begin[56:312] = rng.choice([b"\xff" * 256, b"a" * 256, b"tank/data/src@\x1b[31m\0".ljust(256, b"\0")])
    else:
        begin[field : field + size] = rng.randbytes(size)
    streams[index] = bytes(begin) + streams[index][sendstream.RECORD_SIZE :]
    if rng.random() < 0.3:
        streams[index] = streams[index][: rng.randrange(sendstream.RECORD_SIZE + 1)]
    return raw_bundle(tmp, craft.dumps(meta), raw_infos, streams), f"part {index}'s BEGIN record, bytes {field}+{size}"


def as_text(value: Any) -> bytes:
    """``value`` as UTF-8 JSON, every string as it is: what a reader hands on must be
    text (a lone surrogate would fail wherever it is printed or written)."""
    return json.dumps(value, ensure_ascii=False).encode()


def read_bundle(path: Path) -> None:
    """Every way a bundle is read without a pool, and what the CLI shows of it."""
    info = reader.inspect(path)
    as_text(_bundle_json(str(path), info))
    checked = check.check_bundle(path, digest=True)  # the claims, BEGIN records and every byte
    "\n".join(bundle_text.describe(checked.info, checked.signature)).encode()  # printable: no surrogate left
    bundle_text.describe_signature(checked.signature).encode()
    for _, chunks in reader.iter_parts(path, expect=checked.info):
        for _ in chunks:
            pass
    reader.part_ranges(path, expect=checked.info)


def run_cli(path: Path, *, accepted: bool) -> None:
    """``bundle inspect`` and ``bundle verify`` (text and JSON) exit 0 for a bundle the
    library accepted and 9 for one it refused, printing only text (no lone surrogate)."""
    for command in (["bundle", "inspect"], ["--json", "bundle", "inspect"], ["bundle", "verify"]):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = cli_main([*command, str(path)])
        inspected = command[-1] == "inspect"
        assert status in ((0,) if accepted else (0, 9) if inspected else (9,)), (command, status, err.getvalue())
        (out.getvalue() + err.getvalue()).encode()


def run_rounds(
    rounds: int,
    make: Callable[[random.Random], tuple[bytes, str]],
    read: Callable[[bytes], None],
    after: Callable[[int, bool], None] | None = None,
) -> dict[str, int]:
    """``rounds`` mutated inputs read; each must read or raise our error, within
    PER_INPUT_SECONDS, the readers' allocations staying under PEAK_BYTES. ``after(round,
    accepted)`` then runs outside the allocation count. Returns how many inputs were
    refused and accepted (so a mutation loop that refuses everything shows)."""
    rng = random.Random(SEED)
    outcome = {"refused": 0, "accepted": 0}
    for round_ in range(rounds):
        data, what = make(rng)
        where = f"seed {SEED}, iteration {round_}: {what}"
        try:
            with deadline(PER_INPUT_SECONDS), allocation_peak() as peak:
                read(data)
            accepted = True
        except DsgStorageError as exc:
            assert str(exc) and shown(str(exc)).encode(), where
            accepted = False
        except Exception as exc:  # noqa: BLE001 (the failure reports it)
            pytest.fail(f"{where}: {type(exc).__name__}: {exc}")
        assert peak[0] < PEAK_BYTES, f"{where}: the readers allocated {peak[0]} bytes at their peak"
        if after is not None:
            with deadline(PER_INPUT_SECONDS):
                after(round_, accepted)
        outcome["accepted" if accepted else "refused"] += 1
    return outcome


def test_mutated_bundles_read_or_are_refused_with_our_errors(tmp_path: Path) -> None:
    meta, infos, streams = sound_parts()
    sound = raw_bundle(tmp_path, craft.dumps(meta), [craft.dumps(i) for i in infos], streams)
    path = tmp_path / "fuzz.dsgb"
    path.write_bytes(sound)
    read_bundle(path)  # the sound one reads

    def read(data: bytes) -> None:
        path.write_bytes(data)
        read_bundle(path)

    def through_cli(round_: int, accepted: bool) -> None:
        if round_ % CLI_EVERY == 0:  # the command line costs ~3 ms a call (argparse)
            run_cli(path, accepted=accepted)

    outcome = run_rounds(BUNDLE_ROUNDS, lambda rng: mutated_bundle(rng, sound, tmp_path), read, through_cli)
    assert outcome["refused"] > BUNDLE_ROUNDS // 2 and outcome["accepted"] > 0, outcome


# ---------------------------------------------------------------------------- lock files
LOCK = lf.LockFile(
    "tank/data/survey",
    "2026-11-23T10:10:10Z",
    (
        lf.LockedCommit("dsg-commit-20261121T101010123Z", 11),
        lf.LockedCommit("dsg-commit-20261122T101010123Z", 2**64 - 1),
    ),
    dsg_storage_version="0.1.0",
)


def mutated_lock(rng: random.Random, sound: bytes) -> tuple[bytes, str]:
    kind = rng.choice(["flip", "truncate", "insert", "json", "json", "json", "text", "text"])
    if kind in BYTE_DAMAGE:
        return byte_damage(rng, sound, kind, spots=1, insert=16)
    if kind == "json":
        changed, what = mutate_json(rng, json.loads(sound))
        return dumps(changed), what
    return mutate_text(rng, sound)


def read_lock(data: bytes) -> None:
    """A lock file parsed, compared and shown as ``verify --lock`` does."""
    lock = lf.loads_bytes(data, source="fuzz.lock")
    as_text([lock.repository, lock.created, lock.dsg_storage_version, [c.name for c in lock.commits]])
    "\n".join(lf.compare(lock, list(LOCK.commits)).describe()).encode()
    lf.dumps(lock).encode()


def test_mutated_lock_files_read_or_are_refused_with_our_errors() -> None:
    sound = lf.dumps(LOCK).encode()
    read_lock(sound)
    outcome = run_rounds(LOCK_ROUNDS, lambda rng: mutated_lock(rng, sound), read_lock)
    assert outcome["refused"] > LOCK_ROUNDS // 2 and outcome["accepted"] > 0, outcome


def test_a_lock_file_on_disk_with_a_huge_length_field_is_read_in_bounded_memory(tmp_path: Path) -> None:
    """A lock file has no length fields: its size is the file's, capped before reading."""
    path = tmp_path / "sparse.lock"
    with open(path, "wb") as f:
        f.truncate(1 << 40)  # sparse: a terabyte that takes no disk
    with allocation_peak() as peak, pytest.raises(DsgStorageError, match="larger than"):
        lf.read(path)
    assert peak[0] < 2 * lf.MAX_SIZE + (1 << 20)


# ---------------------------------------------------------------------------- the sudo policy
POLICY_ROUNDS = 2000
POLICY = b"""version = 1
[datasets]
allow = ["tank/data", "vault"]
[mountpoints]
under = ["/srv/repos"]
[owners]
allow = ["invoker", "2000:2000"]
[bundles]
require_signed = true
max_size = 107374182400
[output]
under = ["/home/alice"]
[properties]
allow = ["org.example:", "net.other:job"]
"""
TOML_PIECES = [b"[", b"]", b'"', b"=", b"\n", b"\n[properties]\nallow = [1]\n", b"\n[x]\n", b"'''", b"\\u", b"1e999"]


def mutated_policy(rng: random.Random) -> tuple[bytes, str]:
    kind = rng.choice([*BYTE_DAMAGE, "text", "toml", "toml"])
    if kind in BYTE_DAMAGE:
        return byte_damage(rng, POLICY, kind, spots=2, insert=16)
    if kind == "text":
        return mutate_text(rng, POLICY)
    at, piece = rng.randrange(len(POLICY) + 1), rng.choice(TOML_PIECES)
    return POLICY[:at] + piece + POLICY[at:], f"{piece!r} inserted at byte {at}"


def read_policy(data: bytes) -> None:
    """A policy file's bytes as ``SudoPolicy.load`` reads them, then every check asked of it."""
    policy = SudoPolicy.from_bytes(data, source="fuzz.toml", invoker=Owner(1000, 1000))
    for asked in (
        lambda: policy.check_dataset("tank/data/a"),
        lambda: policy.check_mountpoint("/srv/repos/a"),
        lambda: policy.check_owner("1000:1000"),
        lambda: policy.check_output("/home/alice/x"),
        lambda: policy.check_properties({"org.example:job": "x"}),
    ):
        with contextlib.suppress(NotAllowedError):  # a refusal is an answer; anything else fails the round
            asked()


def test_mutated_policy_files_read_or_are_refused_with_our_errors() -> None:
    read_policy(POLICY)
    outcome = run_rounds(POLICY_ROUNDS, mutated_policy, read_policy)
    assert outcome["refused"] > POLICY_ROUNDS // 4 and outcome["accepted"] > POLICY_ROUNDS // 10, outcome
