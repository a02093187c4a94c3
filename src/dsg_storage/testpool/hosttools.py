"""The host tools the VM needs (qemu; debootstrap and mkfs.ext4 to build the image).

``plan`` decides, from what is missing and what this machine is, whether we install
them ourselves (root on Debian/Ubuntu: apt-get) or tell the user the exact command for
their system; ``ensure`` acts on that. Standard library only (runs before anything is
installed).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

QEMU = "qemu-system-x86_64"
#: Needed to boot the image (qemu) and to build it (all three).
BOOT_TOOLS = (QEMU,)
BUILD_TOOLS = (QEMU, "debootstrap", "mkfs.ext4")

#: Package that provides each tool, per package manager.
_PACKAGES: Mapping[str, Mapping[str, str]] = {
    "apt": {QEMU: "qemu-system-x86", "debootstrap": "debootstrap", "mkfs.ext4": "e2fsprogs"},
    "dnf": {QEMU: "qemu-system-x86-core", "debootstrap": "debootstrap", "mkfs.ext4": "e2fsprogs"},
    "pacman": {QEMU: "qemu-system-x86", "debootstrap": "debootstrap", "mkfs.ext4": "e2fsprogs"},
    "zypper": {QEMU: "qemu-x86", "debootstrap": "debootstrap", "mkfs.ext4": "e2fsprogs"},
}
_INSTALL = {
    "apt": "apt-get install --no-install-recommends",
    "dnf": "dnf install",
    "pacman": "pacman -S --needed",
    "zypper": "zypper install",
}
_FAMILIES = {"debian": "apt", "ubuntu": "apt", "fedora": "dnf", "rhel": "dnf", "arch": "pacman", "suse": "zypper"}


class HostToolsError(RuntimeError):
    """A tool the VM needs is missing and we may not (or cannot) install it here."""


@dataclasses.dataclass(frozen=True)
class Install:
    """Install these packages with apt-get (we are root on Debian/Ubuntu)."""

    packages: tuple[str, ...]

    def commands(self) -> list[list[str]]:
        quiet = ["-y", "-q", "--no-install-recommends", "-o", "Dpkg::Use-Pty=0"]
        return [["apt-get", "update", "-q"], ["apt-get", "install", *quiet, *self.packages]]


@dataclasses.dataclass(frozen=True)
class Refuse:
    """We cannot install them: ``message`` says exactly what the user should run."""

    message: str


def package_manager(os_release: Mapping[str, str]) -> str | None:
    """The package manager of the distribution ``/etc/os-release`` describes, if known."""
    ids = [os_release.get("ID", ""), *os_release.get("ID_LIKE", "").split()]
    for name in ids:
        if name.lower() in _FAMILIES:
            return _FAMILIES[name.lower()]
    return None


def plan(missing: Iterable[str], os_release: Mapping[str, str], *, euid: int, has_apt: bool) -> Install | Refuse | None:
    """What to do about the ``missing`` tools: nothing, install them, or refuse and explain."""
    missing = list(dict.fromkeys(missing))
    if not missing:
        return None
    manager = package_manager(os_release)
    if manager is None:
        return Refuse(
            f"missing host tools {', '.join(missing)}: install them with your system's package manager "
            "(qemu-system-x86_64 from QEMU, debootstrap, mkfs.ext4 from e2fsprogs)"
        )
    packages = tuple(dict.fromkeys(_PACKAGES[manager][tool] for tool in missing))
    if manager == "apt" and has_apt and euid == 0:
        return Install(packages)
    sudo = "" if euid == 0 else "sudo "
    return Refuse(f"missing host tools {', '.join(missing)}: {sudo}{_INSTALL[manager]} {' '.join(packages)}")


def read_os_release(path: Path = Path("/etc/os-release")) -> dict[str, str]:
    """``/etc/os-release`` as a dict (empty when the file is missing)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            fields[key.strip()] = value.strip().strip("\"'")
    return fields


def ensure(tools: Iterable[str]) -> None:
    """Make sure ``tools`` are on PATH: install them (saying so) where we may, else raise."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    decision = plan(missing, read_os_release(), euid=os.geteuid(), has_apt=shutil.which("apt-get") is not None)
    if decision is None:
        return
    if isinstance(decision, Refuse):
        raise HostToolsError(decision.message)
    print(
        f"[testpool] installing the host tools the VM needs: apt-get install {' '.join(decision.packages)}",
        file=sys.stderr,
        flush=True,
    )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in decision.commands():
        result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-10:])
            raise HostToolsError(f"{' '.join(argv)} failed (exit {result.returncode}):\n{tail}")
    still = [tool for tool in missing if shutil.which(tool) is None]
    if still:
        raise HostToolsError(f"installed {' '.join(decision.packages)} but {', '.join(still)} is still not on PATH")
