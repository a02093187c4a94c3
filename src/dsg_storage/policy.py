"""What ``sudo dsg-storage`` may do: a root-owned policy file, narrowed by the caller.

A sync user granted ``sudo dsg-storage`` runs it as root, so nothing the caller says
(``--allow``, ``--mountpoint``, ``--owner``, ``-o``, environment variables) can be
trusted to limit it. The limits come from ``/etc/dsg-storage/policy.toml`` instead::

    version = 1
    [datasets]
    allow = ["tank/data"]            # pools/prefixes that may be changed (and read)
    [mountpoints]
    under = ["/srv/repos"]           # mountpoints (and workspaces) lie beneath these
    [owners]
    allow = ["invoker"]              # "invoker": the user who ran sudo; or "UID:GID"
    [bundles]
    require_signed = false           # read by bundle import
    [output]
    under = ["/home", "/srv/export"] # where -o / --cache files may be written

The file is used only if it, and every directory above it, is owned by root and
writable by nobody else, reached without a symbolic link; otherwise ``PolicyError``.
Caller flags can only narrow it (``Policy.narrowed``). Every check raises
``NotAllowedError`` (CLI exit status 3) saying what was refused and what is allowed.
A policy changes nothing by itself: after a crash there is nothing to recover here.
"""

from __future__ import annotations

import os
import posixpath
import stat
import tomllib
from collections.abc import Mapping
from typing import Any

import attrs

from . import hostfs
from .core.options import Owner, check_mountpoint, parse_mode
from .errors import DsgStorageError, InvalidArgumentError, NotAllowedError, PolicyError, UnsafePathError
from .names import prop
from .zfs.allow import AllowList

__all__ = ["DEFAULT_PATH", "EXAMPLE", "Policy", "PolicyError", "check_repository_props", "invoker_from_env"]

DEFAULT_PATH = "/etc/dsg-storage/policy.toml"
INVOKER = "invoker"
MAX_SIZE = 1 << 20
_SCHEMA: dict[str, dict[str, type]] = {
    "datasets": {"allow": list},
    "mountpoints": {"under": list},
    "owners": {"allow": list},
    "bundles": {"require_signed": bool},
    "output": {"under": list},
}
EXAMPLE = """\
version = 1
[datasets]
allow = ["tank/data"]
[mountpoints]
under = ["/srv/repos"]
[owners]
allow = ["invoker"]
[output]
under = ["/home"]
"""


def _strings(value: list[Any], where: str) -> tuple[str, ...]:
    if not all(isinstance(v, str) for v in value):
        raise InvalidArgumentError(f"{where} must be a list of strings")
    return tuple(value)


def _dirs(value: list[Any], where: str, *, root_ok: bool) -> tuple[str, ...]:
    dirs = []
    for item in _strings(value, where):
        if item == "/" and root_ok:
            dirs.append(item)
            continue
        try:
            dirs.append(check_mountpoint(item))
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"{where}: {exc.message}") from None
    return tuple(dirs)


def _beneath(path: str, under: tuple[str, ...]) -> bool:
    return any(path.startswith(u.rstrip("/") + "/") for u in under)


@attrs.frozen
class Policy:
    """A parsed policy. ``invoker`` is the user who ran sudo (``SUDO_UID``/``SUDO_GID``);
    ``caller`` the caller's own allow-list, which can only narrow ``datasets``."""

    source: str
    datasets: AllowList = attrs.field(factory=AllowList)
    mountpoints_under: tuple[str, ...] = ()
    owners: tuple[Owner, ...] = ()
    require_signed_bundles: bool = False
    output_under: tuple[str, ...] = ()
    invoker: Owner | None = None
    caller: AllowList | None = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def parse(cls, text: str, *, source: str = "<policy>", invoker: Owner | None = None) -> Policy:
        """Parse policy TOML (schema in the module docstring); unknown keys are errors."""
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"{source} is not valid TOML: {exc}") from None
        try:
            return cls._from_doc(doc, source, invoker)
        except InvalidArgumentError as exc:
            raise PolicyError(f"{source}: {exc.message}") from None

    @classmethod
    def _from_doc(cls, doc: dict[str, Any], source: str, invoker: Owner | None) -> Policy:
        if doc.get("version", 1) != 1:
            raise InvalidArgumentError(f"version {doc.get('version')!r} is not one this dsg-storage reads (1)")
        for key, table in doc.items():
            if key == "version":
                continue
            if key not in _SCHEMA or not isinstance(table, dict):
                raise InvalidArgumentError(f"unknown section [{key}] (known: {', '.join(_SCHEMA)})")
            for field, value in table.items():
                wanted = _SCHEMA[key].get(field)
                if wanted is None:
                    raise InvalidArgumentError(f"unknown key {field!r} in [{key}]")
                if not isinstance(value, wanted):
                    raise InvalidArgumentError(f"[{key}] {field} must be a {wanted.__name__}")
        section = {k: doc.get(k, {}) for k in _SCHEMA}
        owners: list[Owner] = []
        for text in _strings(section["owners"].get("allow", [INVOKER]), "[owners] allow"):
            if text == INVOKER:
                if invoker is not None:
                    owners.append(invoker)
                continue
            owners.append(Owner.parse(text))
        try:
            datasets = AllowList.parse(_strings(section["datasets"].get("allow", []), "[datasets] allow"))
        except DsgStorageError as exc:
            raise InvalidArgumentError(f"[datasets] allow: {exc.message}") from None
        return cls(
            source=source,
            datasets=datasets,
            mountpoints_under=_dirs(section["mountpoints"].get("under", []), "[mountpoints] under", root_ok=False),
            owners=tuple(owners),
            require_signed_bundles=section["bundles"].get("require_signed", False),
            output_under=_dirs(section["output"].get("under", []), "[output] under", root_ok=True),
            invoker=invoker,
        )

    @classmethod
    def load(cls, path: str = DEFAULT_PATH, *, invoker: Owner | None = None) -> Policy:
        """Read the policy at ``path``, refusing it (PolicyError) unless the file and every
        directory above it are root's and writable by nobody else, with no link on the way.
        A missing file raises FileNotFoundError."""
        parent, name = posixpath.split(hostfs._absolute(path))
        try:
            dirfd = hostfs.open_dir(parent, trusted_uids=(0,))
        except UnsafePathError as exc:
            raise PolicyError(f"policy file {path} cannot be trusted: {exc}") from None
        try:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dirfd)
            except OSError as exc:
                if isinstance(exc, FileNotFoundError):
                    raise
                raise PolicyError(f"policy file {path} cannot be opened: {exc.strerror} (a symbolic link?)") from None
        finally:
            os.close(dirfd)
        with os.fdopen(fd, "rb") as handle:
            st = os.fstat(handle.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise PolicyError(f"policy file {path} is not a regular file")
            if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                raise PolicyError(
                    f"policy file {path} is owned by uid {st.st_uid} with mode {stat.S_IMODE(st.st_mode):04o}: "
                    "it must be root's and writable by nobody else",
                    hint=f"chown root:root {path}; chmod 0644 {path}",
                )
            data = handle.read(MAX_SIZE + 1)
        if len(data) > MAX_SIZE:
            raise PolicyError(f"policy file {path} is larger than {MAX_SIZE} bytes")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise PolicyError(f"policy file {path} is not UTF-8 text") from None
        return cls.parse(text, source=path, invoker=invoker)

    def narrowed(self, caller: AllowList) -> Policy:
        """This policy, further limited to ``caller``'s allow-list when it names anything."""
        return attrs.evolve(self, caller=caller) if caller.prefixes else self

    # ------------------------------------------------------------------ checks
    def check_dataset(self, dataset: str) -> None:
        """NotAllowedError unless both the policy and the caller's allow-list allow ``dataset``."""
        if not self.datasets.allows(dataset):
            raise NotAllowedError(
                f"{dataset!r} is outside what {self.source} allows ({', '.join(self.datasets.prefixes) or 'nothing'})",
                dataset=dataset,
                hint="ask the administrator to add it to [datasets] allow",
            )
        if self.caller is not None:
            self.caller.check(dataset)

    def allow_list(self) -> AllowList:
        """The datasets both allow, as an AllowList for code that takes one."""
        if self.caller is None:
            return self.datasets
        narrowed = [p for p in self.caller.prefixes if self.datasets.allows(p)]
        narrowed += [p for p in self.datasets.prefixes if self.caller.allows(p) and p not in narrowed]
        return AllowList(tuple(narrowed))

    def check_mountpoint(self, path: str, *, what: str = "mountpoint") -> str:
        """The normalized ``path``, which must lie strictly beneath a ``[mountpoints] under``
        directory. (Links and foreign parents are checked when mounting: hostfs.)"""
        normal = check_mountpoint(path)
        if not _beneath(normal, self.mountpoints_under):
            raise NotAllowedError(
                f"{what} {normal} is outside the directories {self.source} allows for mountpoints "
                f"({', '.join(self.mountpoints_under) or 'none'})",
                hint="ask the administrator to add a directory to [mountpoints] under",
            )
        return normal

    def check_owner(self, owner: Owner | str | tuple[int, int]) -> Owner:
        """The parsed ``owner``, which must be one the policy allows (by default the invoker)."""
        parsed = Owner.parse(owner)
        if parsed not in self.owners:
            allowed = ", ".join(str(o) for o in self.owners) or "nobody"
            raise NotAllowedError(
                f"owner {parsed} is not one {self.source} allows ({allowed})",
                hint="give no --owner (the invoking user) or ask the administrator to add it to [owners] allow",
            )
        return parsed

    def check_output(self, path: str) -> str:
        """The absolute ``path`` of a file to write, which must lie beneath an ``[output] under`` directory."""
        full = os.path.abspath(path)
        if "\0" in full or not _beneath(full, self.output_under):
            raise NotAllowedError(
                f"output file {full} is outside the directories {self.source} allows for output "
                f"({', '.join(self.output_under) or 'none'})",
                hint="write it under an allowed directory, or ask the administrator to add one to [output] under",
            )
        return full

    def check_repository_props(self, dataset: str, props: Mapping[str, str]) -> None:
        """Check the properties that steer root, as read from the pool (anyone who can set
        user properties, or wrote a foreign pool, chose them): see ``check_repository_props``."""
        check_repository_props(props, policy=self, dataset=dataset)


def check_repository_props(
    props: Mapping[str, str], *, policy: Policy | None = None, dataset: str | None = None
) -> None:
    """Validate ``dsg-storage:path``, ``:mountpoint``, ``:owner``, ``:mode`` as read from a
    pool before acting on them: well formed always (InvalidArgumentError naming the
    property), and with ``policy`` also inside it (NotAllowedError). Absent ones are skipped."""
    where = f" of {dataset}" if dataset else ""
    for key in (prop("path"), prop("mountpoint")):
        value = props.get(key)
        if value is None:
            continue
        try:
            normal = check_mountpoint(value)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"property {key}{where} is unusable: {exc.message}", dataset=dataset) from None
        if policy is not None:
            try:
                policy.check_mountpoint(normal, what=f"property {key}{where}:")
            except NotAllowedError as exc:
                raise NotAllowedError(exc.message, dataset=dataset, hint="the pool's properties were changed") from None
    owner = props.get(prop("owner"))
    if owner is not None:
        try:
            parsed = Owner.parse(owner)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"property {prop('owner')}{where} is unusable: {exc.message}") from None
        if policy is not None and parsed not in policy.owners:
            raise NotAllowedError(
                f"property {prop('owner')}{where} says {parsed}, an owner {policy.source} does not allow",
                dataset=dataset,
            )
    mode = props.get(prop("mode"))
    if mode is not None:
        try:
            parse_mode(mode)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"property {prop('mode')}{where} is unusable: {exc.message}") from None


def invoker_from_env(environ: Mapping[str, str]) -> Owner | None:
    """The user who ran sudo (``SUDO_UID``/``SUDO_GID``, set by sudo itself), or None."""
    uid = environ.get("SUDO_UID")
    if uid is None:
        return None
    gid = environ.get("SUDO_GID", "")
    if not (uid + gid).isascii() or not uid.isdigit() or not gid.isdigit():
        raise PolicyError(f"SUDO_UID/SUDO_GID ({uid!r}, {gid!r}) are not numbers")
    return Owner.parse((int(uid), int(gid)))
