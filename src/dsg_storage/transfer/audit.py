"""The audit log: one JSON object per line for every bundle export and import.

Air-gapped package managers keep one; so do we. Each line says who (the invoking user,
the one behind sudo when there is one), when, what (``export`` or ``import``), the
file and its digests (``structure_sha256``, the trailer's hash that with the chunk
digests identifies every byte, always; ``sha256`` of the whole file when a signature was
made or checked: it costs a pass of its own), its signer, the source repository the
bundle records, the target and the result (``ok``, or the error)::

    {"action": "import", "file": "/media/usb/week.dsgb", "into": "vault/survey",
     "result": "ok", "sha256": "9f2c...", "signer": "alice@field-office", "size": 123,
     "structure_sha256": "41d0...",
     "source_repository": "tank/data/survey", "time": "2026-12-01T19:10:00Z",
     "uid": 0, "user": "bob"}

The log file is opened for appending with ``O_NOFOLLOW`` (a link planted at its path is
refused, not followed) and created mode 0600; when root writes it, it must be root's and
writable by nobody else, or it is refused (anyone able to edit it could forge lines).
Each line is one ``write(2)`` on an ``O_APPEND`` descriptor, then fsynced: concurrent
writers never interleave, and a line logged survives a crash. A crash mid-operation
leaves no line for it (the line is written when the result is known).
"""

from __future__ import annotations

import json
import os
import pwd
import stat
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

from .. import _log
from ..errors import DsgStorageError, InvalidArgumentError
from ..settings import Settings

log = _log.getLogger("dsg_storage")
DEFAULT_PATH = "/var/log/dsg-storage/audit.log"


def invoking_user(settings: Settings | None = None) -> dict[str, Any]:
    """``user`` (the name behind sudo when root runs through sudo) and ``uid`` (real);
    who ran sudo comes from ``settings`` (default: the environment, ``Settings.default``)."""
    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    if settings is None:
        settings = Settings.default()
    sudo_user = settings.sudo_user if os.geteuid() == 0 else None
    who: dict[str, Any] = {"user": sudo_user or name, "uid": uid}
    if sudo_user:
        who["sudo_uid"] = settings.sudo_uid
    return who


@attrs.frozen
class AuditLog:
    path: str = DEFAULT_PATH
    #: Says who ran sudo, for each line (``invoking_user``); None: the environment, read then.
    settings: Settings | None = attrs.field(default=None, kw_only=True)

    def _open(self) -> int:
        target = Path(self.path)
        if not target.parent.exists():
            target.parent.mkdir(mode=0o700, parents=True)
        try:
            fd = os.open(
                self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY, 0o600
            )
        except OSError as exc:
            raise InvalidArgumentError(
                f"cannot write the audit log {self.path}: {exc.strerror}",
                hint="give a writable one with --audit-log FILE",
            ) from None
        st = os.fstat(fd)
        problem = None
        if not stat.S_ISREG(st.st_mode):
            problem = "it is not a regular file"
        elif os.geteuid() == 0 and (st.st_uid != 0 or st.st_mode & 0o022):
            problem = "root writes it, but it is not root's alone (owned by another user, or group/other-writable)"
        if problem:
            os.close(fd)
            raise InvalidArgumentError(f"refusing the audit log {self.path}: {problem}")
        return fd

    def check(self) -> None:
        """Refuse now, before anything is done, if lines could not be appended later."""
        os.close(self._open())

    def append(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` with the time and the invoking user, as one line."""
        line = {"time": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")}
        line.update(invoking_user(self.settings))
        line.update(record)
        data = (json.dumps(line, sort_keys=True, default=str) + "\n").encode()
        fd = self._open()
        try:
            if os.write(fd, data) != len(data):
                raise OSError(f"{self.path}: a short write to the audit log")
            os.fsync(fd)
        finally:
            os.close(fd)


def audit_failure(audit: AuditLog, record: dict[str, Any], exc: BaseException) -> None:
    """Log an operation that failed; a failure to log is noted on the original error."""
    result = f"error: {type(exc).__name__}: {exc}" if isinstance(exc, Exception) else "interrupted"
    try:
        audit.append({**record, "result": result})
    except (OSError, DsgStorageError) as log_exc:  # the operation's own error is the one to raise
        log.error("cannot append to the audit log %s: %s", audit.path, log_exc)
        exc.add_note(f"(and the audit log {audit.path} could not be written: {log_exc})")
