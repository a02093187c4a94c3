"""Where the userland reader's OpenZFS comes from: the host's, or a private copy we unpack.

``locate(cache)`` returns how to start the helper (``Userland.argv``):

1. the host's own OpenZFS 2.3 userland (``libzpool.so.6`` and ``libnvpair.so.3`` in the
   usual library directories) run by this Python: nothing to fetch;
2. else a private root unpacked in ``cache`` (``<cache>/<key>/root``), made once by
   ``apt-get download`` of Debian trixie's OpenZFS 2.3 packages and their libraries
   (libc6 included: the host's may be older) and ``dpkg -x``; the helper then runs as
   ``ROOT/usr/lib64/ld-linux-x86-64.so.2 --library-path ROOT_LIBS python3 -I -S helper.py``:
   this Python, under the private root's loader and C library. Nothing is installed on the
   host, nothing runs as root, and the cache works without the network afterwards.

A root appears under its final name only once complete; ``<cache>/current`` names it.
``UserlandUnavailableError`` says what is missing and what to do when neither works.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import attrs

from .protocol import UserlandError

HELPER = Path(__file__).resolve().with_name("helper.py")
#: The OpenZFS series the helper's structures were written for (libzpool.so.6).
SERIES = "2.3."
SUITE = "trixie"
PACKAGES = (
    "libzpool6linux", "libnvpair3linux", "libtirpc3t64", "libc6", "zlib1g", "libblkid1", "libudev1", "libuuid1",
    # zdb, libzfs and libuutil: for reading labels by hand and for the benchmark's comparison
    "zfsutils-linux", "libzfs6linux", "libuutil3linux", "libssl3t64",
)  # fmt: skip
_LIBDIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu")
_HOST_LIBDIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/local/lib", "/usr/lib")


class UserlandUnavailableError(UserlandError):
    """No OpenZFS userland could be found or fetched for the userland reader."""


@attrs.frozen
class Userland:
    """An OpenZFS userland the helper can run with."""

    libzpool: str
    libnvpair: str
    root: str | None  # the private root, or None for the host's own
    version: str

    def argv(self, python: str = os.path.realpath(sys.executable)) -> list[str]:
        libs = [self.libzpool, self.libnvpair]
        if self.root is None:
            return [python, "-I", "-S", str(HELPER), *libs]
        loader = _loader(self.root)
        path = ":".join(os.path.join(self.root, d) for d in _LIBDIRS)
        return [loader, "--library-path", path, python, "-I", "-S", str(HELPER), *libs]

    def zdb(self) -> list[str]:
        """The command that runs this userland's zdb (the benchmark's comparison)."""
        if self.root is None:
            return ["zdb"]
        loader = _loader(self.root)
        path = ":".join(os.path.join(self.root, d) for d in _LIBDIRS)
        return [loader, "--library-path", path, os.path.join(self.root, "usr", "sbin", "zdb")]


def _loader(root: str) -> str:
    """The root's own dynamic loader (trixie is merged-/usr: dpkg -x puts it under usr/)."""
    for where in ("usr/lib64", "lib64", "usr/lib/x86_64-linux-gnu"):
        loader = os.path.join(root, where, "ld-linux-x86-64.so.2")
        if os.path.exists(loader):
            return loader
    raise UserlandUnavailableError(
        f"the private userland {root} has no ld-linux-x86-64.so.2: remove it to fetch it again"
    )


def host_userland() -> Userland | None:
    for directory in _HOST_LIBDIRS:
        zpool, nvpair = Path(directory, "libzpool.so.6"), Path(directory, "libnvpair.so.3")
        if zpool.exists() and nvpair.exists():
            return Userland(str(zpool), str(nvpair), None, "host")
    return None


def default_cache() -> Path:
    return Path.home() / ".cache" / "dsg-storage" / "userland"


def locate(cache: str | os.PathLike[str] | None = None, *, fetch: bool = True) -> Userland:
    """The userland to use: the host's, the cached private root, or one fetched now."""
    found = host_userland()
    if found is not None:
        return found
    base = Path(cache) if cache is not None else default_cache()
    current = base / "current"
    if current.is_file():
        root = base / current.read_text().strip()
        if (root / "complete").is_file():
            return _private(root)
    if not fetch:
        raise UserlandUnavailableError(f"no OpenZFS userland on this host and none cached in {base}")
    return _private(fetch_root(base))


def _private(root: Path) -> Userland:
    tree = root / "root"
    libs = [tree / d for d in _LIBDIRS]
    zpool = next((d / "libzpool.so.6" for d in libs if (d / "libzpool.so.6").exists()), None)
    nvpair = next((d / "libnvpair.so.3" for d in libs if (d / "libnvpair.so.3").exists()), None)
    if zpool is None or nvpair is None:
        raise UserlandUnavailableError(f"the cached userland {root} is incomplete: remove it to fetch it again")
    return Userland(str(zpool), str(nvpair), str(tree), (root / "complete").read_text().strip())


def _apt_options(work: Path) -> list[str]:
    """apt-get options for a private trixie (main, contrib) source, leaving the host's apt alone."""
    (work / "lists" / "partial").mkdir(parents=True)
    (work / "cache" / "archives" / "partial").mkdir(parents=True)
    sources = work / "sources.list"
    sources.write_text(
        f"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {mirror()} {SUITE} main contrib\n"
    )
    return [
        "-q", "-o", f"Dir::Etc::sourcelist={sources}", "-o", "Dir::Etc::sourceparts=-",
        "-o", f"Dir::State::Lists={work / 'lists'}", "-o", f"Dir::Cache={work / 'cache'}",
        "-o", "Dir::State::status=/dev/null", "-o", "APT::Architecture=amd64",
        "-o", "APT::Sandbox::User=root" if os.geteuid() == 0 else "Debug::NoLocking=1",
    ]  # fmt: skip


def mirror() -> str:
    """The Debian mirror this host already uses (the one known to be reachable)."""
    for sources in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    return "http://deb.debian.org/debian"


def fetch_root(base: Path) -> Path:
    """Download and unpack the pinned packages into a new root under ``base``."""
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise UserlandUnavailableError(
            "no OpenZFS userland on this host and no apt-get to fetch one",
            hint="install OpenZFS 2.3's libraries (libzpool, libnvpair), or use --offline on a host with ZFS",
        )
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fetch-", dir=base))
    try:
        options = _apt_options(work)
        _run(["apt-get", *options, "update"], "apt-get update of Debian trixie")
        debs = work / "debs"
        debs.mkdir()
        _run(["apt-get", *options, "download", *PACKAGES], "apt-get download", cwd=debs)
        names = sorted(p.name for p in debs.glob("*.deb"))
        zfs = next((n for n in names if n.startswith("libzpool6linux_")), "")
        version = zfs.split("_")[1] if zfs else ""
        if not version.startswith(SERIES):
            raise UserlandUnavailableError(f"Debian {SUITE} offers libzpool {version or 'none'}, not OpenZFS {SERIES}x")
        key = hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]
        final = base / key
        if not (final / "complete").is_file():
            partial = work / "unpacked"
            (partial / "root").mkdir(parents=True)
            for deb in names:
                _run(["dpkg", "-x", str(debs / deb), str(partial / "root")], f"dpkg -x {deb}")
            (partial / "complete").write_text(version + "\n")
            shutil.rmtree(final, ignore_errors=True)
            partial.rename(final)
        (base / "current.tmp").write_text(key + "\n")
        (base / "current.tmp").rename(base / "current")
        return final
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(argv: list[str], what: str, *, cwd: Path | None = None) -> None:
    try:
        result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)
    except subprocess.TimeoutExpired:
        raise UserlandUnavailableError(f"{what} took more than 600s") from None
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise UserlandUnavailableError(f"{what} failed (exit {result.returncode}): {tail}")
