"""The userland reader on real pool images, on a host with no ZFS module and no kernel
import: its answers equal the kernel's live answers for the same pool, it writes not a
byte, refuses pools in use elsewhere, and never hands back bytes of a damaged block."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from testpool.parity import read_everything

from dsg_storage.errors import PoolForeignError, ReadOnlyError
from dsg_storage.read.reader import Mode
from dsg_storage.read.userland import DamagedFileError, EncryptionKeyError, HelperCrashedError, open_userland

MiB = 1 << 20


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def test_no_zfs_module_here() -> None:
    assert not os.path.exists("/dev/zfs"), "these tests prove reads without ZFS: run them where it is absent"


def test_userland_answers_equal_the_kernels_live_answers(images: Path) -> None:
    live = json.loads((images / "small.live.json").read_text())
    with open_userland(str(images / "small.img")) as reader:
        assert reader.mode is Mode.USERLAND and reader.describe().startswith("userland, pool dsgul")
        reading = json.loads(json.dumps(read_everything(reader, "dsgul"), sort_keys=True))
    assert reading["repositories"] == live["repositories"]
    assert reading["histories"] == live["histories"]
    for key, listing in live["files"].items():
        assert reading["files"][key] == listing, key
    assert reading == live


def test_xattrs_read_in_userland_as_the_kernel_shows_them(images: Path) -> None:
    binary = bytes(range(256)) * 4
    with open_userland(str(images / "small.img")) as reader:
        for repo in ("dsgul/repos/survey", "dsgul/dirx/old"):  # xattr=sa, xattr=dir
            last = reader.history(repo)[-1].name
            data = reader.stat(repo, "sub/deeper/data.bin")
            assert data.xattrs == (("user.binary", binary), ("user.empty", b"")), repo
            assert reader.stat(repo, "sub").xattrs == (("user.dir", b"on a directory"),), repo
            assert reader.stat(repo, "file0.txt", commit=last).xattrs == (("user.note", b"note 0"),), repo
            assert reader.stat(repo, "link").xattrs == () and data.xattrs_omitted == 0
    live = json.loads((images / "small.live.json").read_text())
    shown = {e["path"]: e["xattrs"] for e in live["files"]["dsgul/dirx/old@HEAD"]}
    assert shown["sub"] == {"user.dir": "b24gYSBkaXJlY3Rvcnk="}  # the kernel saw them too


def test_a_session_writes_not_one_byte(images: Path, tmp_path: Path) -> None:
    image = tmp_path / "small.img"
    shutil.copyfile(images / "small.img", image)
    os.chmod(image, 0o444)
    before = sha256(image)
    with open_userland(str(image)) as reader:
        read_everything(reader, "dsgul")
        with pytest.raises(ReadOnlyError):
            reader.repository("dsgul/repos/survey").snapshot("x")
    assert sha256(image) == before


def test_a_pool_in_use_elsewhere_is_refused_unless_forced(images: Path) -> None:
    with pytest.raises(PoolForeignError, match="ACTIVE"):
        open_userland(str(images / "active.img"))
    with open_userland(str(images / "active.img"), force=True) as reader:
        assert reader.catalog.exists("dsgul/data")


def test_a_damaged_block_is_an_error_naming_the_file(images: Path) -> None:
    damaged = json.loads((images / "damaged.json").read_text())
    with open_userland(str(images / "damaged.img")) as reader:
        with pytest.raises(DamagedFileError, match=damaged["path"]):
            reader.read(damaged["repository"], damaged["path"])
        assert reader.read(damaged["repository"], "file2.txt") == b"commit 2\n"


def test_a_killed_helper_is_our_error(images: Path) -> None:
    with open_userland(str(images / "small.img")) as reader:
        os.kill(reader.helper.pid, signal.SIGKILL)
        with pytest.raises(HelperCrashedError, match="signal 9"):
            reader.files("dsgul/repos/survey")


def crypt_keys(images: Path) -> dict[str, bytes]:
    keys = json.loads((images / "crypt.json").read_text())
    return {f"dsgul/{form}": bytes.fromhex(key) for form, key in keys.items()}


def test_encrypted_repositories_read_with_their_keys_as_live(images: Path) -> None:
    keys = crypt_keys(images)
    keys["dsgul/passphrase"] += b"\n"  # as a key file usually ends
    with open_userland(str(images / "crypt.img"), keys=keys) as reader:
        reading = json.loads(json.dumps(read_everything(reader, "dsgul"), sort_keys=True))
    live = json.loads((images / "crypt.live.json").read_text())
    assert reading["files"]["dsgul/passphrase/survey@HEAD"] == live["files"]["dsgul/passphrase/survey@HEAD"]
    assert reading == live


def test_a_wrong_key_is_a_clear_error_at_once(images: Path) -> None:
    started = time.monotonic()
    with pytest.raises(EncryptionKeyError, match="key given for dsgul/passphrase is wrong"):
        open_userland(str(images / "crypt.img"), keys={"dsgul/passphrase": b"not the passphrase"})
    with pytest.raises(EncryptionKeyError, match="key given for dsgul/raw is wrong"):
        open_userland(str(images / "crypt.img"), keys={"dsgul/raw": bytes(32)})
    assert time.monotonic() - started < 60  # zdb -K hangs forever here


def test_without_its_key_an_encrypted_repository_says_so(images: Path) -> None:
    with open_userland(str(images / "crypt.img"), keys={"dsgul/raw": crypt_keys(images)["dsgul/raw"]}) as reader:
        assert reader.read("dsgul/raw/notes", "file0.txt") == b"commit 0\n"
        assert len(reader.history("dsgul/passphrase/survey")) == 2  # the history needs no key
        with pytest.raises(EncryptionKeyError, match="encryption root dsgul/passphrase.*not given"):
            reader.files("dsgul/passphrase/survey")


def test_the_command_line_takes_key_files(images: Path, tmp_path: Path) -> None:
    key = tmp_path / "raw.key"
    key.write_bytes(crypt_keys(images)["dsgul/raw"])
    key.chmod(0o600)
    argv = [sys.executable, "-m", "dsg_storage", "--json", "--userland", "--search-path", str(images / "crypt.img")]
    argv += ["--key-file", f"dsgul/raw={key}", "cat", "dsgul/raw/notes", "file0.txt"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["content_base64"] == "Y29tbWl0IDAK" and done.stderr.startswith("access: userland")
    assert key.read_bytes().hex() not in done.stderr + done.stdout
