"""Keys for encrypted datasets read in userland: a key file becomes the wrapping key
zfs load-key would make, a malformed one or one for no encryption root is our clear
error, and whatever a pool records cannot make a key's derivation fail otherwise."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

import pytest

from dsg_storage.errors import InvalidArgumentError
from dsg_storage.read.userland.keys import (
    MAX_KEY_FILE,
    EncryptionKeyError,
    assign,
    encryption_root,
    read_key_file,
    wrapping_key,
)

SEED = 2603


def props(keyformat: int, salt: int = 0x0123456789ABCDEF, iters: int = 1000) -> dict[str, Any]:
    return {
        "keyformat": {"value": keyformat, "source": "-"},
        "pbkdf2salt": {"value": salt, "source": "-"},
        "pbkdf2iters": {"value": iters, "source": "-"},
        "encryptionroot": {"value": "tank/secret", "source": "-"},
    }


def test_a_passphrase_is_stretched_as_libzfs_stretches_it() -> None:
    expected = hashlib.pbkdf2_hmac("sha1", b"correct horse", bytes.fromhex("efcdab8967452301"), 1000, 32)
    assert wrapping_key("tank/secret", props(3), b"correct horse\n") == expected  # one newline ignored
    with pytest.raises(EncryptionKeyError, match="8 to 512"):
        wrapping_key("tank/secret", props(3), b"short")
    with pytest.raises(EncryptionKeyError, match="pbkdf2"):
        wrapping_key("tank/secret", props(3, iters=10**12), b"correct horse")


def test_raw_and_hex_keys_are_taken_as_they_are() -> None:
    key = bytes(range(32))
    assert wrapping_key("tank/secret", props(1), key) == key
    assert wrapping_key("tank/secret", props(2), key.hex().encode() + b"\n") == key
    with pytest.raises(EncryptionKeyError, match="raw key of 32 bytes, not 33"):
        wrapping_key("tank/secret", props(1), key + b"\n")
    with pytest.raises(EncryptionKeyError, match="64 hex digits"):
        wrapping_key("tank/secret", props(2), b"zz" * 32)
    with pytest.raises(EncryptionKeyError, match="no key format"):
        wrapping_key("tank/secret", {}, key)


def test_keys_go_to_the_roots_named_or_to_every_root() -> None:
    roots = {"tank/a", "tank/b"}
    assert assign({"": b"k", "tank/b": b"kb"}, roots) == {"tank/a": b"k", "tank/b": b"kb"}
    assert assign({"tank/a": b"ka"}, roots) == {"tank/a": b"ka"}
    with pytest.raises(InvalidArgumentError, match="tank/c: not an encryption root"):
        assign({"tank/c": b"k"}, roots)
    assert encryption_root(props(3)) == "tank/secret" and encryption_root({}) is None


def test_a_key_file_is_read_bounded(tmp_path: Path) -> None:
    (tmp_path / "key").write_bytes(b"secret passphrase\n")
    assert read_key_file(tmp_path / "key") == b"secret passphrase\n"
    (tmp_path / "big").write_bytes(b"x" * (MAX_KEY_FILE + 1))
    with pytest.raises(InvalidArgumentError, match="larger than"):
        read_key_file(tmp_path / "big")
    with pytest.raises(InvalidArgumentError, match="No such file"):
        read_key_file(tmp_path / "missing")


def test_fuzzed_keys_and_pool_records_give_a_key_or_our_error() -> None:
    rng = random.Random(SEED)
    values: list[object] = [None, -1, 0, 1, 2, 3, 4, 2**64, 2**63, "3", True, 1.5, [3], {"value": 3}]
    for iteration in range(2000):
        record = {
            name: {"value": rng.choice(values)} if rng.random() < 0.8 else rng.choice(values)
            for name in ("keyformat", "pbkdf2salt", "pbkdf2iters")
            if rng.random() < 0.9
        }
        if rng.random() < 0.5 and isinstance(record.get("pbkdf2iters"), dict):
            record["pbkdf2iters"] = {"value": rng.choice([1, 2, 10])}
        material = bytes(rng.randrange(256) for _ in range(rng.choice([0, 7, 8, 32, 33, 64, 65, 600])))
        try:
            key = wrapping_key("tank/x", record, material)
        except EncryptionKeyError:
            continue
        except Exception as exc:  # pragma: no cover - the failure the test exists for
            raise AssertionError(f"seed {SEED} iteration {iteration}: {record!r} raised {exc!r}") from exc
        assert len(key) == 32, (SEED, iteration)
