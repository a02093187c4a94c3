"""Offline, read-only access to exported pools (real ZFS).

Every pool these tests export is named ``dsgtest`` on disk (created under a temporary
in-core name with ``zpool create -t``), so opening it offline always collides with the
live ``dsgtest`` pool and must use a temporary name: the suite never touches another pool.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from testpool.parity import read_everything

from dsg_storage import (
    CacheMissError,
    PoolForeignError,
    PoolNotFoundError,
    PoolOpenError,
    ReadOnlyError,
    Repository,
    RepositoryNotFoundError,
)
from dsg_storage.names import P_OWNER
from dsg_storage.read.cache import ReadCache
from dsg_storage.read.offline import open_offline
from dsg_storage.read.reader import Mode, open_live
from dsg_storage.testpool.pool import DEFAULT_FILE  # the live dsgtest pool's own file
from dsg_storage.zfs.allow import AllowList
from dsg_storage.zfs.boundary import open_zfs

from .conftest import Sandbox

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20


def zpool(*args: str) -> str:
    return subprocess.run(["zpool", *args], check=True, capture_output=True, text=True).stdout


def imported_guids() -> set[str]:
    return set(zpool("list", "-H", "-o", "guid").split())


@pytest.fixture(autouse=True)
def own_tempdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test mounts under a temporary directory of its own, so that what it left is
    told apart from what other workers' readers and offline pools mount meanwhile."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("TMPDIR", str(tmp))


def our_mounts(marker: str) -> list[str]:
    """This test's mounts under directories named ``marker*``."""
    prefix = f"{tempfile.gettempdir()}/{marker}"
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line for line in lines if line.split()[4].startswith(prefix)]


@attrs.frozen
class ExportedPool:
    files: tuple[str, ...]
    guid: str
    repos: tuple[str, ...]  # on-disk names: dsgtest/...

    def sha256(self) -> dict[str, str]:
        out = {}
        for name in self.files:
            digest = hashlib.sha256()
            with open(name, "rb") as handle:
                while chunk := handle.read(MiB):
                    digest.update(chunk)
            out[name] = digest.hexdigest()
        return out


def make_pool(tmp_path: Path, layout: str = "single", *, commits: int = 2) -> ExportedPool:
    """An exported pool named dsgtest on disk, on files in tmp_path, holding two
    repositories written through the library (one with ``commits`` commits)."""
    files = [str(tmp_path / f"disk{i}.img") for i in range(2 if layout != "single" else 1)]
    for name in files:
        with open(name, "wb") as handle:
            handle.truncate(128 * MiB)
    vdevs = ["mirror", *files] if layout == "mirror" else files
    temp = f"dsgtest-off-{secrets.token_hex(3)}"
    zpool("create", "-t", temp, "-o", "cachefile=none", "-m", "none", "dsgtest", *vdevs)
    guid = zpool("list", "-H", "-o", "guid", temp).strip()
    try:
        subprocess.run(["zfs", "create", f"{temp}/repos"], check=True)
        repos = []
        for name, count in (("survey", commits), ("notes", 1)):
            repo = Repository(f"{temp}/repos/{name}", allow=temp)
            for n in range(count):
                with repo.begin(mountpoint=str(tmp_path / "mnt" / name), owner="1000:1000", mode="0750") as tx:
                    Path(tx.path, f"file{n}.txt").write_text(f"{name} commit {n}\n")
                    Path(tx.path, "sub").mkdir(exist_ok=True)
                    Path(tx.path, "sub", "data.bin").write_bytes(os.urandom(3000 + n))
                    Path(tx.path, "link").unlink(missing_ok=True)
                    os.symlink("file0.txt", Path(tx.path, "link"))
                    tx.commit(f"commit {n} of {name}\nwith a second line")
            repos.append(f"dsgtest/repos/{name}")
    finally:
        zpool("export", temp)
    return ExportedPool(tuple(files), guid, tuple(repos))


@pytest.fixture
def exported(tmp_path: Path) -> Iterator[ExportedPool]:
    pool = make_pool(tmp_path)
    yield pool
    assert pool.guid not in imported_guids(), "the offline pool was left imported"
    assert not our_mounts("dsg-storage-offline-") and not our_mounts("dsg-storage-read-")


def test_offline_open_reads_history_and_files_of_an_exported_pool(exported: ExportedPool) -> None:
    with open_offline(exported.files) as reader:
        assert reader.mode is Mode.OFFLINE and reader.read_only
        assert reader.imported_as != "dsgtest" and reader.imported_as.startswith("dsgtest-ro-")
        assert "offline" in reader.describe() and "imported read-only as" in reader.describe()
        repos = {r.name: r for r in reader.repositories()}
        assert sorted(repos) == ["dsgtest/repos/notes", "dsgtest/repos/survey"]
        assert repos["dsgtest/repos/survey"].commits == 2 and repos["dsgtest/repos/survey"].owner == "1000:1000"
        history = reader.history("dsgtest/repos/survey")
        assert [c.message for c in history] == [
            "commit 0 of survey\nwith a second line",
            "commit 1 of survey\nwith a second line",
        ]
        assert all(c.snapshot.startswith("dsgtest/repos/survey@dsg-commit-") and c.guid > 0 for c in history)
        head = {e.path: e for e in reader.files("dsgtest/repos/survey")}
        assert {"", "file0.txt", "file1.txt", "sub", "sub/data.bin", "link"} <= set(head)
        assert head["file1.txt"].uid in (0, 1000) and head[""].mode == "0750" and head[""].uid == 1000
        assert head["link"].type == "symlink" and head["link"].target == "file0.txt"
        first = {e.path for e in reader.files("dsgtest/repos/survey", commit=history[0].name)}
        assert "file1.txt" not in first and "file0.txt" in first
        assert reader.read("dsgtest/repos/survey", "file1.txt") == b"survey commit 1\n"
        assert reader.stat("dsgtest/repos/survey", "sub/data.bin", commit=history[0].name).size == 3000
        with pytest.raises(FileNotFoundError):
            reader.read("dsgtest/repos/survey", "file1.txt", commit=history[0].name)
        assert our_mounts("dsg-storage-read-"), "the teardown's check must see this session's mounts"
        # `status` lists by commands, and as root runs the family read by `zfs program`,
        # which a pool imported read-only refuses: the commands answer instead
        survey = f"{reader.imported_as}/repos/survey"
        by_commands = open_zfs(AllowList(()), read_only=True, listing="commands")
        assert by_commands.listing.programs
        family = by_commands.family(survey)
        assert family == open_zfs(AllowList(()), read_only=True).family(survey)
        assert family[survey][P_OWNER] == "1000:1000" and f"{reader.imported_as}/repos" in family
    # the fixture checks: exported again, nothing mounted


def test_offline_session_writes_not_one_byte(exported: ExportedPool) -> None:
    before = exported.sha256()
    with open_offline(":".join(exported.files)) as reader:  # a colon-separated string, as zpool takes
        reading = read_everything(reader, "dsgtest")
        assert len(reading["files"]) == 2 + 3  # heads of 2 repositories, 3 commits
    assert exported.sha256() == before


def test_every_mutating_call_is_refused_offline(exported: ExportedPool, tmp_path: Path) -> None:
    with open_offline(exported.files) as reader:
        repo = reader.repository("dsgtest/repos/survey")
        calls = {
            "begin": lambda: repo.begin(mountpoint=str(tmp_path / "x")),
            "commit": lambda: repo.commit("20261121T000000Z-000000"),
            "rollback": lambda: repo.rollback("20261121T000000Z-000000"),
            "abort": lambda: repo.abort("20261121T000000Z-000000"),
            "recover": repo.recover,
            "snapshot": lambda: repo.snapshot("dsgtest/repos/survey@mine"),
            "create (boundary)": lambda: reader.zfs.create(f"{reader.imported_as}/new"),
            "destroy (boundary)": lambda: reader.zfs.destroy(f"{reader.imported_as}/repos/notes"),
        }
        for name, call in calls.items():
            with pytest.raises(ReadOnlyError, match="read-only"):
                call()
            assert name
        history = reader.history("dsgtest/repos/survey")
        assert len(history) == 2, "a refused call changed the history"
        # the mounts themselves refuse writes too
        root = reader._root("dsgtest/repos/survey", None)
        with pytest.raises(OSError, match="Read-only file system"):
            Path(root, "new.txt").write_text("x")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cli = [sys.executable, "-m", "dsg_storage", "--offline", "--search-path", exported.files[0]]
    result = subprocess.run(
        [*cli, "begin", "dsgtest/repos/survey"], check=False, capture_output=True, text=True, env=env
    )
    assert result.returncode == 8 and "read-only" in result.stderr


def test_parity_live_and_offline_by_the_repository_script(exported: ExportedPool) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "testpool" / "parity.py"), *exported.files],
        check=False,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "parity: identical: 2 repositories, 3 commits" in result.stdout


def test_cli_shows_the_mode_and_reads_offline(exported: ExportedPool) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cli = [sys.executable, "-m", "dsg_storage", "--json", "--offline", "--search-path", exported.files[0]]
    run = lambda *a: subprocess.run([*cli, *a], check=False, capture_output=True, text=True, env=env)
    history = run("history", "dsgtest/repos/survey")
    assert history.returncode == 0, history.stderr
    assert "access: offline" in history.stderr
    commits = json.loads(history.stdout)
    assert [c["access"] for c in commits] == ["offline", "offline"]
    assert [(c["freshness"], c["age"]) for c in commits] == [("offline", 0.0), ("offline", 0.0)]
    listing = json.loads(run("ls", "dsgtest/repos/survey", "sub", "--commit", commits[0]["name"]).stdout)
    assert [e["path"] for e in listing] == ["sub", "sub/data.bin"] and listing[0]["access"] == "offline"
    cat = subprocess.run(
        [*cli[:3], *cli[4:], "cat", "dsgtest/repos/survey", "file0.txt"], check=False, capture_output=True, env=env
    )
    assert cat.returncode == 0 and cat.stdout == b"survey commit 0\n" and b"access: offline" in cat.stderr
    missing = run("cat", "dsgtest/repos/survey", "nope.txt")
    assert missing.returncode == 4
    no_repo = run("history", "dsgtest/repos/nope")
    assert no_repo.returncode == 4 and "does not exist" in no_repo.stderr


def test_degraded_mirror_opens_and_says_so(tmp_path: Path) -> None:
    pool = make_pool(tmp_path, "mirror", commits=1)
    os.rename(pool.files[1], pool.files[1] + ".gone")
    with open_offline(pool.files) as reader:
        assert reader.health == "DEGRADED"
        assert "DEGRADED" in reader.describe() and "devices missing" in reader.describe()
        assert reader.read("dsgtest/repos/survey", "file0.txt") == b"survey commit 0\n"
    assert pool.guid not in imported_guids()


def test_pool_missing_a_device_beyond_redundancy_is_refused(tmp_path: Path) -> None:
    pool = make_pool(tmp_path, "stripe", commits=1)
    os.rename(pool.files[1], pool.files[1] + ".gone")
    with pytest.raises(PoolOpenError, match=r"cannot be opened: state UNAVAIL.*disk1\.img"):
        open_offline(pool.files)
    assert pool.guid not in imported_guids()
    assert not our_mounts("dsg-storage-offline-")


def test_pool_last_used_by_another_host_is_refused(tmp_path: Path, exclusive_pool: None) -> None:
    """A pool copied while imported by a host with another hostid (as a disk pulled from a
    running machine would be)."""
    hostid = Path("/sys/module/spl/parameters/spl_hostid")
    image = tmp_path / "foreign.img"
    with open(image, "wb") as handle:
        handle.truncate(128 * MiB)
    temp = f"dsgtest-off-{secrets.token_hex(3)}"
    saved = hostid.read_text().strip()
    hostid.write_text("3735928559")
    try:
        zpool("create", "-t", temp, "-o", "cachefile=none", "-m", "none", "dsgtest", str(image))
        zpool("sync", temp)
        subprocess.run(["cp", "--sparse=always", str(image), str(tmp_path / "copy.img")], check=True)
        zpool("export", temp)
    finally:
        hostid.write_text(saved)
    image.unlink()
    with pytest.raises(PoolForeignError, match="last used by another system"):
        open_offline(str(tmp_path / "copy.img"))
    assert not our_mounts("dsg-storage-offline-")
    assert "dsgtest-ro-" not in zpool("list", "-H", "-o", "name")


def test_damaged_labels_and_missing_paths_say_what_is_wrong(tmp_path: Path) -> None:
    pool = make_pool(tmp_path, commits=1)
    with open(pool.files[0], "r+b") as handle:  # all four labels: two at each end
        handle.write(os.urandom(512 * 1024))
        handle.seek(-512 * 1024, os.SEEK_END)
        handle.write(os.urandom(512 * 1024))
    with pytest.raises(PoolNotFoundError, match="no valid ZFS label"):
        open_offline(pool.files)
    with pytest.raises(PoolNotFoundError, match="does not exist"):
        open_offline(str(tmp_path / "nowhere.img"))
    empty = tmp_path / "empty.img"
    empty.write_bytes(b"\0" * MiB)
    with pytest.raises(PoolNotFoundError, match="empty.img: no valid ZFS label"):
        open_offline(str(empty))
    assert pool.guid not in imported_guids()


def test_an_imported_pool_is_read_as_it_is(sandbox: Sandbox) -> None:
    """The live dsgtest pool's own file: used as it is, never exported, still read-only."""
    repo = Repository(f"{sandbox.dataset}/r", allow=sandbox.allow)
    with repo.begin(mountpoint=str(sandbox.mount_dir / "r")) as tx:
        Path(tx.path, "a").write_text("a")
    with open_offline(DEFAULT_FILE) as reader:
        assert reader.mode is Mode.LIVE and reader.read_only and "already imported" in reader.describe()
        assert reader.read(repo.name, "a") == b"a"
        with pytest.raises(ReadOnlyError):
            reader.repository(repo.name).begin()
    assert "dsgtest" in zpool("list", "-H", "-o", "name").split()


def test_cached_reads_when_the_pool_is_gone(sandbox: Sandbox, tmp_path: Path) -> None:
    repo = Repository(f"{sandbox.dataset}/r", allow=sandbox.allow)
    for n in range(2):
        with repo.begin(mountpoint=str(sandbox.mount_dir / "r")) as tx:
            Path(tx.path, f"f{n}").write_text("x")
            tx.commit(f"c{n}")
    cache_file = tmp_path / "reads.sqlite"
    with open_live(cache=ReadCache(cache_file)) as reader:
        with pytest.raises(RepositoryNotFoundError):
            reader.history(f"{sandbox.dataset}/missing")
        live_history = reader.history(repo.name)
        live_repos = reader.repositories(sandbox.dataset)
    gone = str(tmp_path / "gone.img")
    with pytest.raises(PoolNotFoundError):
        open_offline(gone, cache=ReadCache(cache_file))  # not asked: never served silently
    with open_offline(gone, cache=ReadCache(cache_file), cached=True) as reader:
        assert reader.cached and reader.mode is Mode.OFFLINE
        assert reader.history(repo.name) == live_history
        assert reader.repositories(sandbox.dataset) == live_repos
        assert reader.taken_at("history", repo.name)
        with pytest.raises(CacheMissError):
            reader.read(repo.name, "f0")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dsg_storage",
            "--json",
            "--offline",
            "--search-path",
            gone,
            "--cached",
            "--cache",
            str(cache_file),
            "history",
            repo.name,
        ],
        check=False,
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert [r["message"] for r in records] == ["c0", "c1"]
    assert all(r["cached"] is True and r["cached_at"] and r["access"] == "offline" for r in records)
    assert all(r["freshness"] == "cached" and 0 <= r["age"] < 600 for r in records)
    assert "cached: taken at " in result.stderr and "s ago" in result.stderr
