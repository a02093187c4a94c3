"""A project's Python dependencies for the guest, which has no network and no pip.

pip on the host downloads binary wheels for the *guest's* interpreter (CPython 3.13,
x86_64 glibc) and unpacks them into one directory (``pip install --target``); the VM
shares that directory read-only and puts it on the guest's ``PYTHONPATH``. The directory
is cached under a key of the requirements' bytes and the pip arguments, so the next run
reuses it without the network. Standard library only.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

#: The guest image's interpreter and platform (Debian trixie: CPython 3.13, glibc 2.41).
GUEST_PYTHON = "3.13"
GUEST_PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_28_x86_64", "manylinux_2_34_x86_64")


class DepsError(RuntimeError):
    """The dependencies could not be fetched for the guest."""


def pip_argv(python: str, target: Path, requirements: Sequence[Path], *, guest: bool = True) -> list[str]:
    """The pip command that fills ``target`` with wheels for the guest's Python.

    ``guest=False``: for ``python`` itself (local ZFS: the command runs on this host)."""
    files = [arg for req in requirements for arg in ("-r", str(req))]
    argv = [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--quiet"]
    argv += ["--target", str(target), "--only-binary=:all:"]
    if guest:
        abi = "cp" + GUEST_PYTHON.replace(".", "")
        argv += ["--python-version", GUEST_PYTHON, "--implementation", "cp", "--abi", abi]
        argv += [arg for platform in GUEST_PLATFORMS for arg in ("--platform", platform)]
    return argv + files


def cache_key(requirements: Sequence[Path], *, guest: bool = True) -> str:
    flavour = "guest" if guest else f"local-{sys.implementation.cache_tag}"
    digest = hashlib.sha256(
        flavour.encode() + b"\0" + " ".join(pip_argv("python", Path("T"), [], guest=guest)).encode()
    )
    for req in requirements:
        digest.update(b"\0" + req.read_bytes())
    return digest.hexdigest()[:16]


def ensure(requirements: Sequence[Path], cache: Path, *, python: str = sys.executable, guest: bool = True) -> Path:
    """The directory holding ``requirements`` for the guest; fetched with pip unless cached.

    The directory appears under its final name only once pip succeeded, so an interrupted
    fetch is never mistaken for a complete one.
    """
    for req in requirements:
        if not req.is_file():
            raise DepsError(f"requirements file {req} does not exist")
    target = cache / "deps" / cache_key(requirements, guest=guest)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    argv = pip_argv(python, partial, requirements, guest=guest)
    print(f"[testpool] fetching Python dependencies: {' '.join(argv[1:])}", file=sys.stderr, flush=True)
    result = subprocess.run(argv, check=False)
    if result.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise DepsError(
            f"pip could not fetch {', '.join(map(str, requirements))} (exit {result.returncode})"
            + (f"; only binary wheels for CPython {GUEST_PYTHON} on x86_64 Linux can be used" if guest else "")
        )
    try:
        partial.rename(target)
    except OSError:  # another run finished the same directory first
        if not target.is_dir():
            raise
        shutil.rmtree(partial, ignore_errors=True)
    return target
