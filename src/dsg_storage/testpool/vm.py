"""Real ZFS on a machine without it: build, cache and boot a small qemu VM.

The image (Debian trixie, OpenZFS built by DKMS, python3-pyzfs) is built by
``image/build-image.sh`` and cached outside any checkout under a key derived from every
input of the build, so that changing the package list or the build script rebuilds it.
A run boots the image with a checkout shared at the same path as on the host, runs one
shell command there as root with the zfs module loaded, streams its output and returns
its exit code. A watchdog kills a VM that printed nothing for a while (a hung guest),
and one past an overall limit when the caller sets one; either is reported. A guest
that stops before the command started (a kernel panic while booting) is booted once more.

Standard library only: this runs on the host, before anything is installed, and it never
imports the rest of dsg_storage (``testpool/run`` loads this package on its own).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import os
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from . import hosttools

HERE = Path(__file__).resolve().parent
#: The image's inputs. Their file names and bytes are the image's cache key: never edit them.
IMAGE_INPUT_DIR = HERE / "image"
#: The dsg_storage package itself, copied into every guest (the plugin, the pool tool).
PACKAGE_DIR = HERE.parent
# Bump to force a rebuild when the meaning of the image changes without its inputs changing.
IMAGE_FORMAT = "1"
IMAGE_INPUTS = ("build-image.sh", "guest-init.sh", "image-packages.txt")
#: A run is killed when the guest printed nothing this long (s): a hung guest, not a slow one.
#: pytest -q is silent during a test: one crash-safety test ran ~5 min silent on a loaded
#: 2-core machine, so the margin is wide.
DEFAULT_SILENCE_TIMEOUT = 1200.0
#: No overall limit by default: a run that keeps printing is making progress.
DEFAULT_TIMEOUT: float | None = None
#: Boots per run. A guest under software emulation has been seen to panic while booting
#: (once in ~15 boots); nothing of the command has run then, so booting again is safe.
BOOT_ATTEMPTS = 2
#: The file main.sh creates in the control share just before the command starts.
STARTED = "started"
BUILD_TIMEOUT = float(os.environ.get("DSG_VM_BUILD_TIMEOUT", "1800"))
BOOT_FLAGS = (
    # Software emulation: the paravirtual /dev/kvm here crashes stock kernels and then hangs.
    "-accel", "tcg,thread=multi", "-cpu", "max",
    "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
    "-nic", "none", "-no-reboot",
)  # fmt: skip
KERNEL_CMDLINE = "console=ttyS0 root=/dev/vda rw quiet loglevel=1 init=/sbin/dsg-init panic=-1"
#: Where the guest finds the shared dependency directory and our own package.
GUEST_DEPS = "/run/dsg-deps"
GUEST_PYLIB = "/ctl/pylib"


class VMError(RuntimeError):
    """The VM could not be built, booted, or did not report an exit code."""


class VMTimeout(VMError, TimeoutError):
    """The VM ran past one of its limits (silence, overall) and was killed."""


@dataclasses.dataclass
class Watchdog:
    """When to kill the VM: once it printed nothing for ``silence`` seconds, or ran
    ``overall`` seconds in all (None: no such limit). It only decides, from the times it
    is given; ``_stream`` reads the clock, waits and kills."""

    silence: float | None
    overall: float | None
    started: float
    last_output: float = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.last_output = self.started

    def heard(self, now: float) -> None:
        """The guest printed something at ``now``."""
        self.last_output = now

    def expired(self, now: float) -> str | None:
        """Which limit has fired at ``now`` (the message to report), or None."""
        if self.overall is not None and now - self.started >= self.overall:
            return f"the VM ran past its overall limit of {self.overall:g}s (--timeout) and was killed"
        if self.silence is not None and now - self.last_output >= self.silence:
            return f"the VM printed nothing for {self.silence:g}s (--silence-timeout) and was killed"
        return None

    def wait(self, now: float) -> float | None:
        """Seconds from ``now`` until a limit could fire (None: never, without more output)."""
        deadlines = [self.started + self.overall] if self.overall is not None else []
        if self.silence is not None:
            deadlines.append(self.last_output + self.silence)
        return max(0.0, min(deadlines) - now) if deadlines else None


def cache_root() -> Path:
    env = os.environ.get("DSG_VM_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dsg-storage" / "vm"


def image_key() -> str:
    digest = hashlib.sha256(IMAGE_FORMAT.encode())
    digest.update(os.environ.get("DSG_VM_SUITE", "trixie").encode())
    for name in IMAGE_INPUTS:
        digest.update(name.encode() + b"\0" + (IMAGE_INPUT_DIR / name).read_bytes())
    return digest.hexdigest()[:16]


def image_dir() -> Path:
    return cache_root() / "images" / image_key()


def _log(message: str) -> None:
    print(f"[testpool] {message}", file=sys.stderr, flush=True)


def ensure_image() -> Path:
    """Return the cached image, building it first when its inputs changed."""
    image = image_dir()
    if (image / "manifest.txt").exists():
        os.utime(image / "manifest.txt")  # in use: not pruned by a build for other inputs
        return image
    cache = cache_root()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two runs at once build the image once
        if (image / "manifest.txt").exists():
            return image
        if os.geteuid() != 0:
            raise VMError(
                f"no VM image cached at {image} and building one needs root "
                "(debootstrap, chroot): run this once as root"
            )
        hosttools.ensure(hosttools.BUILD_TOOLS)
        _log(f"building the VM image (first run: about 4-5 minutes) into {image}")
        started = time.monotonic()
        # Its own process group, so that a build past its time limit is killed whole
        # (debootstrap, apt and dkms run as grandchildren).
        build = subprocess.Popen(
            ["bash", str(IMAGE_INPUT_DIR / "build-image.sh"), str(image), str(cache)], start_new_session=True
        )
        try:
            returncode = build.wait(timeout=BUILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(build.pid, signal.SIGTERM)  # the script's trap unmounts what it mounted
            try:
                build.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(build.pid, signal.SIGKILL)
                build.wait()
            raise VMTimeout(f"building the VM image took more than {BUILD_TIMEOUT:.0f}s and was killed") from None
        if returncode != 0:
            raise VMError(f"building the VM image failed (exit {returncode}); see the output above")
        _log(f"phase image-build: {time.monotonic() - started:.1f}s")
        _prune_old_images(keep=image)
    return image


#: Images unused this long are removed when another is built (checkouts of other
#: branches, or other projects, may share the cache and use another image meanwhile).
PRUNE_UNUSED_AFTER = 3 * 86400.0


def _prune_old_images(keep: Path) -> None:
    for other in (cache_root() / "images").iterdir():
        if other == keep or not other.is_dir() or other.name.endswith(".tmp"):
            continue
        manifest = other / "manifest.txt"
        used = manifest.stat().st_mtime if manifest.exists() else 0.0
        if time.time() - used > PRUNE_UNUSED_AFTER:
            shutil.rmtree(other, ignore_errors=True)


#: Where the guest keeps the dsgtest pool's backing file (pool.DEFAULT_FILE's directory).
#: With a pool disk, that disk's filesystem is mounted here.
GUEST_POOL_DIR = "/var/lib/dsg-storage-testpool"
#: The pool disk's device: the second virtio drive (the image is /dev/vda).
GUEST_POOL_DISK = "/dev/vdb"


@dataclasses.dataclass(frozen=True)
class Machine:
    """What the VM has. ``pool_disk`` (bytes, see ``pool_disk_bytes``) adds a disk for the
    pool's backing file: a sparse file on the host in a temporary directory under
    ``cache_root()``, removed when the run ends: also when the VM crashed or the runner
    got SIGTERM (``cli.exit_on_sigterm``); a SIGKILLed runner leaves ``pool-disk-*``."""

    memory_mb: int = 4096
    cpus: int = 2
    pool_disk: int | None = None


def pool_disk_bytes(pool_size: int) -> int:
    """The size of a pool disk that holds a backing file of ``pool_size`` bytes: ext4's
    metadata and reserved blocks take ~5%, and the margin covers small pools too."""
    return pool_size + pool_size // 10 + (256 << 20)


def _guest_main(checkout: Path, command: str, *, deps: bool, pool_disk: bool = False) -> str:
    """The script PID 1 runs: mount the checkout (and the deps), load zfs, run the command.
    With ``pool_disk``, the second drive gets a filesystem and becomes the directory of
    the pool's backing file (the image's own disk has ~3 GB free)."""
    quoted = shlex.quote(str(checkout))
    # The guest console is a tty; colour only when our own output is one too.
    colors = "1" if sys.stdout.isatty() else "0"
    # cache=loose: the guest keeps what it read of the shares (names, attributes, data).
    # Without it every Python process a test starts asks the host through 9p about each
    # module it imports (~0.3 s a process under emulation, a third of a CLI call's
    # imports). The cost: a file changed on the host while the command runs may not be
    # seen; what the guest writes reaches the host by the sync before power-off.
    mount_9p = "mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose"
    mount_deps = f"mkdir -p {GUEST_DEPS} && {mount_9p},ro deps {GUEST_DEPS} || exit 125" if deps else ""
    # The checkout's src/ first (its own code wins), then its dependencies, then ours.
    pythonpath = ":".join([f"{checkout}/src", *([GUEST_DEPS] if deps else []), GUEST_PYLIB])
    mount_pool_disk = (
        f"mkfs.ext4 -q -F {GUEST_POOL_DISK} && mkdir -p {GUEST_POOL_DIR} && "
        f"mount {GUEST_POOL_DISK} {GUEST_POOL_DIR} && chmod 0700 {GUEST_POOL_DIR} || exit 125"
        if pool_disk
        else ""
    )
    return f"""#!/bin/sh
mkdir -p {quoted}
{mount_9p} checkout {quoted} || exit 125
{mount_deps}
{mount_pool_disk}
modprobe zfs || exit 125
echo "[testpool] phase boot: guest ready after $(cut -d' ' -f1 /proc/uptime)s of uptime" >&2
cd {quoted} || exit 125
# From here on the command may have run: a guest that dies later is not booted again.
: > /ctl/{STARTED}
# Bytecode goes to the guest's own disk (gone at power-off), never into the shared
# checkout: without it every Python process a test starts would compile each module it
# imports anew, from sources read through 9p.
export HOME=/root LANG=C.UTF-8 PYTHONPATH={shlex.quote(pythonpath)} PYTHONPYCACHEPREFIX=/var/tmp/pycache
export DSG_TESTPOOL_IN_VM=1 PY_COLORS={colors} TERM={"linux" if colors == "1" else "dumb"}
exec /bin/sh -c {shlex.quote(command)} 2>&1
"""


def run(
    command: str,
    *,
    checkout: Path,
    deps: Path | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    silence_timeout: float | None = DEFAULT_SILENCE_TIMEOUT,
    machine: Machine = Machine(),
) -> int:
    """Run ``command`` (a shell string) as root inside the VM, from ``checkout``; return its exit code.

    ``checkout`` is shared read-write at the same path as on the host; ``deps`` (a
    directory of unpacked wheels, see ``deps.py``) read-only, on the guest's PYTHONPATH.
    A copy of this dsg_storage package is on it too, so the guest can create the pool and
    load the pytest plugin whatever the checkout is. ``machine`` says what the VM has.

    The VM is killed (VMTimeout) once it printed nothing for ``silence_timeout`` seconds,
    or ran ``timeout`` seconds in all; None turns a limit off.
    """
    image = ensure_image()
    hosttools.ensure(hosttools.BOOT_TOOLS)
    qemu = shutil.which(hosttools.QEMU)
    if qemu is None:
        raise VMError(f"{hosttools.QEMU} is missing")
    checkout = checkout.resolve()
    with tempfile.TemporaryDirectory(prefix="dsg-vm-ctl-") as ctl_name, contextlib.ExitStack() as stack:
        ctl = Path(ctl_name)
        (ctl / "main.sh").write_text(
            _guest_main(checkout, command, deps=deps is not None, pool_disk=machine.pool_disk is not None)
        )
        drives = []
        if machine.pool_disk is not None:
            # Outside the control share (the guest must not see it as a file), and beside
            # the image, not in /tmp: a tmpfs there (Debian's default since trixie) would
            # hold what the guest writes to the pool in memory.
            disk_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="pool-disk-", dir=cache_root()))
            disk = Path(disk_dir) / "pool-disk.raw"
            with open(disk, "xb") as handle:
                handle.truncate(machine.pool_disk)  # sparse: the host pays for what the guest writes
            drives = ["-drive", f"file={disk},format=raw,if=virtio,cache=unsafe"]
        shutil.copytree(PACKAGE_DIR, ctl / "pylib" / PACKAGE_DIR.name, ignore=shutil.ignore_patterns("__pycache__"))
        shares = [("checkout", checkout, False), ("ctl", ctl, False)]
        if deps is not None:
            shares.append(("deps", deps.resolve(), True))
        virtfs = [
            arg
            for tag, path, readonly in shares
            for arg in ("-virtfs", f"local,path={path},mount_tag={tag},security_model=none{',readonly=on' * readonly}")
        ]
        argv = [
            qemu, *BOOT_FLAGS,
            "-m", str(machine.memory_mb), "-smp", str(machine.cpus),
            "-kernel", str(image / "vmlinuz"), "-initrd", str(image / "initrd.img"),
            "-append", KERNEL_CMDLINE,
            # snapshot=on: the image stays pristine and several VMs can share it.
            "-drive", f"file={image / 'rootfs.ext4'},format=raw,if=virtio,snapshot=on,cache=unsafe",
            *drives,
            *virtfs,
            "-serial", "stdio",
        ]  # fmt: skip
        started = time.monotonic()
        for attempt in range(1, BOOT_ATTEMPTS + 1):
            qemu_rc = _boot(argv, Watchdog(silence=silence_timeout, overall=timeout, started=started))
            rc = command_exit_code(ctl, qemu_rc)
            if rc is not None:
                _log(f"phase vm-total: {time.monotonic() - started:.1f}s")
                return rc
            if attempt < BOOT_ATTEMPTS:
                _log(f"the guest stopped (qemu exit {qemu_rc}) before the command started: booting it again")
        raise VMError(f"the guest stopped before the command started, {BOOT_ATTEMPTS} boots in a row")


def command_exit_code(ctl: Path, qemu_rc: int) -> int | None:
    """The command's exit code from the control share ``ctl`` after the guest stopped;
    None when the guest stopped before the command started (boot again); VMError when it
    stopped while the command ran, without reporting how it ended."""
    rc_file = ctl / "rc"
    if rc_file.exists():
        text = rc_file.read_text().strip()
        if not text.isdigit():
            raise VMError(f"the guest reported {text!r} as the command's exit code")
        return int(text)
    if not (ctl / STARTED).exists():
        return None
    raise VMError(f"the VM stopped (qemu exit {qemu_rc}) without reporting the command's exit code")


def _boot(argv: list[str], watchdog: Watchdog) -> int:
    """Boot qemu with ``argv``, stream its console until it exits; its exit code. A limit
    that fires kills it (VMTimeout)."""
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=_die_with_us,  # noqa: PLW1509 (no threads here)
    )
    try:
        _stream(proc, watchdog)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode


def _die_with_us() -> None:
    """Run in qemu's process before exec: the kernel kills it when this runner dies,
    however it dies (a SIGTERM or SIGKILL skips the cleanup above), instead of leaving a
    VM running on, orphaned, on a machine's cores."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _stream(
    proc: subprocess.Popen[bytes],
    watchdog: Watchdog,
    *,
    clock: Callable[[], float] = time.monotonic,
    out: BinaryIO | None = None,
    poll: float | None = None,
) -> None:
    """Copy the guest console to ``out`` (our stdout) until qemu exits, or raise
    VMTimeout (the caller kills qemu) when ``watchdog`` says a limit fired. ``poll`` caps
    each wait (tests pass a small one with their own ``clock``)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    sink = out if out is not None else sys.stdout.buffer
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            now = clock()
            why = watchdog.expired(now)
            if why is not None:
                raise VMTimeout(f"{why} (qemu pid {proc.pid})")
            wait = watchdog.wait(now)
            if poll is not None:
                wait = poll if wait is None else min(wait, poll)
            if not sel.select(timeout=wait):
                continue
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:  # EOF: qemu exited
                proc.wait()
                return
            watchdog.heard(clock())
            sink.write(chunk.replace(b"\r", b""))  # the guest console ends lines with \r\n
            sink.flush()
