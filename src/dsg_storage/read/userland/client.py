"""The helper process, from the parent's side: start it, ask, wait with a deadline, stop it.

Every wait has a deadline (``timeout``): a helper that does not answer in time is killed
and the call raises ``HelperTimeoutError``; one that dies (a libzpool ``VERIFY`` aborts
it) raises ``HelperCrashedError`` with the end of what it printed on stderr. After either,
the session is over: every later call raises the same kind of error at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import selectors
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from . import protocol
from .protocol import HelperProtocolError, UserlandError

#: Seconds a request may take by default (an import of a large pool, a slow disk).
DEFAULT_TIMEOUT = 120.0
_STDERR_TAIL = 4000
#: Bytes one read request returns at most: the size of the window the helper writes
#: file bytes into (shared memory, see ``Helper.read_into``).
WINDOW = 8 << 20


class HelperCrashedError(UserlandError):
    """The helper process died (or its pipe closed) before answering."""


class HelperTimeoutError(UserlandError, TimeoutError):
    """The helper did not answer within its time limit and was killed."""


class HelperRequestError(UserlandError):
    """The helper answered a request with an error (``errno`` tells which)."""

    def __init__(self, message: str, *, code: int) -> None:
        super().__init__(message)
        self.code = code


class Helper:
    """One helper process (one pool import per session)."""

    def __init__(
        self, argv: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.timeout = timeout
        self._allowed = timeout
        self._clock = clock
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115  kept for the process's life, closed by close()
        self._buffer = bytearray()
        self._dead: UserlandError | None = None
        self._window_fd, self._window = _window(WINDOW)
        try:
            self.proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                close_fds=True,
                pass_fds=(self._window_fd,),
            )
        except OSError as exc:
            self._stderr.close()
            self._window.close()
            os.close(self._window_fd)
            raise HelperCrashedError(f"the userland helper could not be started: {exc}") from exc
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self._out = self.proc.stdout.fileno()
        os.set_blocking(self._out, False)
        with contextlib.suppress(OSError):  # a walk's batches in one piece (Linux's default pipe is 64 KiB)
            fcntl.fcntl(self._out, fcntl.F_SETPIPE_SZ, 1 << 20)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._out, selectors.EVENT_READ)
        try:
            self.pid = protocol.hello(protocol.parse(self._line(self._deadline(None))))
            self.call("window", fd=self._window_fd, size=WINDOW)
        except BaseException:
            self._stop()
            self.close()
            raise

    # ------------------------------------------------------------------ asking
    def call(self, op: str, *, timeout: float | None = None, **args: Any) -> Any:
        """The result of one request (no entries, no data)."""
        deadline = self._send(op, timeout, args)
        while True:
            message = protocol.parse(self._line(deadline))
            if "entries" in message:
                raise self._fail(HelperProtocolError(f"the helper sent a stream for {op!r}"))
            return self._result(message, op)

    def walk(self, dataset: str, obj: int, *, timeout: float | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every entry below directory ``obj``: (path, stat), as the helper streams them."""
        deadline = self._send("walk", timeout, {"dataset": dataset, "obj": obj})
        while True:
            message = protocol.parse(self._line(deadline))
            found = protocol.entries(message)
            if found is None:
                self._result(message, "walk")
                return
            yield from found

    def read(self, dataset: str, obj: int, offset: int, length: int, *, timeout: float | None = None) -> bytes:
        """Bytes [offset, offset+length) of object ``obj``, exactly ``length`` of them."""
        return b"".join(self._window[:want] for _, want in self._windows(dataset, obj, offset, length, timeout))

    def read_into(self, dataset: str, obj: int, offset: int, into: memoryview, *, timeout: float | None = None) -> int:
        """Fill ``into`` with the bytes of object ``obj`` from ``offset``, all of them or an
        error."""
        for done, want in self._windows(dataset, obj, offset, len(into), timeout):
            into[done : done + want] = self._window[:want]
        return len(into)

    def window_bytes(self, size: int) -> bytes:
        """The first ``size`` bytes of the window, as the last request left them."""
        return self._window[:size]

    def _windows(
        self, dataset: str, obj: int, offset: int, length: int, timeout: float | None
    ) -> Iterator[tuple[int, int]]:
        """Ask for ``length`` bytes a window at a time; yields (bytes before, bytes in the
        window) each time the window holds the next ones. The helper writes them into the
        window (a sealed memfd this process made: it can neither shrink nor grow it) and
        answers how many; one copy from there lands them where they go. A pipe cost two
        copies more and a wake-up each 64 KiB, which under a virtual machine halved what
        libzpool itself reads."""
        done = 0
        while done < length:
            want = min(length - done, WINDOW)
            got = self.call("read", timeout=timeout, dataset=dataset, obj=obj, offset=offset + done, length=want)
            if type(got) is not int or got != want:
                raise self._fail(HelperProtocolError(f"the helper read {got!r} bytes of the {want} asked"))
            yield done, want
            done += want

    def _send(self, op: str, timeout: float | None, args: dict[str, Any]) -> float:
        if self._dead is not None:
            raise type(self._dead)(f"the userland helper is gone: {self._dead.message}")
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(protocol.request(op, **args))
            self.proc.stdin.flush()
        except OSError:
            raise self._fail(self._crashed(f"while sending {op!r}")) from None
        return self._deadline(timeout)

    def _result(self, message: dict[str, Any], op: str) -> Any:
        ok, result, code, error = protocol.outcome(message)
        if not ok:
            raise HelperRequestError(f"{op}: {error}", code=code)
        return result

    # ------------------------------------------------------------------ bytes
    def _deadline(self, timeout: float | None) -> float:
        self._allowed = self.timeout if timeout is None else timeout  # what a timeout error names
        return self._clock() + self._allowed

    def _fill(self, deadline: float) -> None:
        """Read what the helper has sent, waiting at most until ``deadline``."""
        left = deadline - self._clock()
        if left <= 0 or not self._selector.select(timeout=left):
            raise self._fail(
                HelperTimeoutError(f"the userland helper did not answer within {self._allowed:g}s and was stopped")
            )
        try:
            chunk = os.read(self._out, 1 << 20)
        except BlockingIOError:
            return
        if not chunk:
            raise self._fail(self._crashed("before answering"))
        self._buffer += chunk

    def _line(self, deadline: float) -> bytes:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                return line
            if len(self._buffer) > protocol.MAX_LINE:
                raise self._fail(HelperProtocolError(f"the helper sent a line longer than {protocol.MAX_LINE} bytes"))
            self._fill(deadline)

    # ------------------------------------------------------------------ ending
    def _crashed(self, when: str) -> HelperCrashedError:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        self._stderr.seek(0, os.SEEK_END)
        self._stderr.seek(max(0, self._stderr.tell() - _STDERR_TAIL))
        tail = self._stderr.read().decode("utf-8", "replace").strip()
        how = f"exit {code}" if code is not None and code >= 0 else f"signal {-code}" if code else "its pipe closed"
        return HelperCrashedError(
            f"the userland helper (pid {self.proc.pid}) died {when} ({how})" + (f": {tail[-1500:]}" if tail else ""),
            hint="the pool may be damaged or of an OpenZFS version this reader does not know; "
            "the kernel (--offline) may still read it",
        )

    def _fail(self, error: UserlandError) -> UserlandError:
        """Record that the session is over, stop the helper, and hand ``error`` back to raise."""
        self._dead = error
        self._stop()
        return error

    def _stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        """End the helper: close its stdin (it exits), kill it if it does not within 10 s."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):  # already gone: the wait below reaps it
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._stop()
        self._selector.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()
        self._window.close()
        os.close(self._window_fd)


def _window(size: int) -> tuple[int, mmap.mmap]:
    """A shared memory file of ``size`` bytes, sealed at that size, and its mapping here."""
    fd = os.memfd_create("dsg-storage-userland", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
        return fd, mmap.mmap(fd, size)
    except BaseException:
        os.close(fd)
        raise
