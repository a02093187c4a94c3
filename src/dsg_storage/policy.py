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
    allowed_signers = "/etc/dsg-storage/allowed_signers"  # root's: whose signatures count
    max_size = 107374182400          # bytes: a larger bundle of the caller's is refused
    [output]
    under = ["/home", "/srv/export"] # where -o / --cache files may be written
    [properties]
    allow = ["org.example:"]         # user properties 'begin --property' may set ("module:" = all of it)

The file is used only if it, and every directory above it, is owned by root and
writable by nobody else, reached without a symbolic link; otherwise ``PolicyError``.
Caller flags can only narrow it (``SudoPolicy.narrowed``). Every check raises
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
from .settings import invoker_from_env  # the one reading of SUDO_UID/SUDO_GID
from .zfs.allow import AllowList

__all__ = ["DEFAULT_PATH", "EXAMPLE", "PolicyError", "SudoPolicy", "check_repository_props", "invoker_from_env"]

DEFAULT_PATH = "/etc/dsg-storage/policy.toml"
INVOKER = "invoker"
MAX_SIZE = 1 << 20
_SCHEMA: dict[str, dict[str, type]] = {
    "datasets": {"allow": list},
    "mountpoints": {"under": list},
    "owners": {"allow": list},
    "bundles": {"require_signed": bool, "allowed_signers": str, "max_size": int},
    "output": {"under": list},
    "properties": {"allow": list},
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


def _signers(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return check_mountpoint(value)  # an absolute, normalized path with no '..'
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"[bundles] allowed_signers: {exc.message}") from None


def _size(value: int | None, where: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not 0 < value < 1 << 63):
        raise InvalidArgumentError(f"{where} must be a positive number of bytes")
    return value


def _property_names(value: list[Any]) -> tuple[str, ...]:
    """``[properties] allow``: user property names (``module:name``) or modules (``module:``)."""
    names = _strings(value, "[properties] allow")
    for name in names:
        module, colon, _ = name.partition(":")
        if not colon or not module or name != name.strip() or len(name) > 255:
            raise InvalidArgumentError(
                f"[properties] allow: {name!r} is not a user property name (module:name) or a module (module:)"
            )
    return names


def _check_schema(doc: dict[str, Any]) -> None:
    """The policy's version, and only known sections and keys, each of its type."""
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


def _beneath(path: str, under: tuple[str, ...]) -> bool:
    return any(path.startswith(u.rstrip("/") + "/") for u in under)


@attrs.frozen
class SudoPolicy:
    """The sudo policy, parsed. ``invoker`` is the user who ran sudo
    (``SUDO_UID``/``SUDO_GID``); ``caller`` the caller's own allow-list, which can only
    narrow ``datasets``."""

    source: str
    datasets: AllowList = attrs.field(factory=AllowList)
    mountpoints_under: tuple[str, ...] = ()
    owners: tuple[Owner, ...] = ()
    require_signed_bundles: bool = False
    output_under: tuple[str, ...] = ()
    allowed_signers: str | None = None
    max_bundle_size: int | None = None
    invoker: Owner | None = None
    caller: AllowList | None = None
    properties: tuple[str, ...] = ()

    # ------------------------------------------------------------------ loading
    @classmethod
    def parse(cls, text: str, *, source: str = "<policy>", invoker: Owner | None = None) -> SudoPolicy:
        """Parse policy TOML (schema in the module docstring); unknown keys are errors."""
        try:
            doc = tomllib.loads(text)
        except ValueError as exc:  # TOMLDecodeError, or an integer of more digits than Python converts
            raise PolicyError(f"{source} is not valid TOML: {exc}") from None
        except RecursionError:  # tomllib recurses once per level of nested arrays
            raise PolicyError(f"{source} is not valid TOML: nested too deeply") from None
        try:
            return cls._from_doc(doc, source, invoker)
        except InvalidArgumentError as exc:
            raise PolicyError(f"{source}: {exc.message}") from None

    @classmethod
    def _from_doc(cls, doc: dict[str, Any], source: str, invoker: Owner | None) -> SudoPolicy:
        _check_schema(doc)
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
            allowed_signers=_signers(section["bundles"].get("allowed_signers")),
            max_bundle_size=_size(section["bundles"].get("max_size"), "[bundles] max_size"),
            output_under=_dirs(section["output"].get("under", []), "[output] under", root_ok=True),
            invoker=invoker,
            properties=_property_names(section["properties"].get("allow", [])),
        )

    @classmethod
    def load(cls, path: str = DEFAULT_PATH, *, invoker: Owner | None = None) -> SudoPolicy:
        """Read the policy at ``path``, refusing it (PolicyError) unless the file and every
        directory above it are root's and writable by nobody else, with no link on the way.
        A missing file raises FileNotFoundError."""
        fd = _open_roots_file(path, "policy file", PolicyError)
        with os.fdopen(fd, "rb") as handle:
            data = handle.read(MAX_SIZE + 1)
        return cls.from_bytes(data, source=path, invoker=invoker)

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "<policy>", invoker: Owner | None = None) -> SudoPolicy:
        """The policy in ``data`` (a file's bytes): at most MAX_SIZE bytes of UTF-8 TOML,
        else PolicyError naming ``source``."""
        if len(data) > MAX_SIZE:
            raise PolicyError(f"policy file {source} is larger than {MAX_SIZE} bytes")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise PolicyError(f"policy file {source} is not UTF-8 text") from None
        return cls.parse(text, source=source, invoker=invoker)

    def signers_file(self, given: str | os.PathLike[str] | None = None) -> str | None:
        """The allowed-signers file signatures are checked against through sudo: the one
        ``[bundles] allowed_signers`` names, checked as the policy file is (root's, with
        every directory above it, writable by nobody else, no link). ``given`` (the
        caller's ``--allowed-signers``) may only name that same file. None: none set."""
        if given is not None and (
            self.allowed_signers is None or hostfs.absolute_path(os.fspath(given)) != self.allowed_signers
        ):
            raise NotAllowedError(
                f"--allowed-signers {os.fspath(given)} is not the file {self.source} names "
                f"({self.allowed_signers or 'none'}): root trusts only the policy's",
                hint="give no --allowed-signers, or ask the administrator to set [bundles] allowed_signers",
            )
        if self.allowed_signers is None:
            return None
        try:
            os.close(_open_roots_file(self.allowed_signers, "allowed-signers file", PolicyError))
        except FileNotFoundError:
            raise PolicyError(
                f"the allowed-signers file {self.allowed_signers} that {self.source} names does not exist",
                hint="ask the administrator to create it (owned by root, mode 0644), empty if nobody signs yet",
            ) from None
        return self.allowed_signers

    def narrowed(self, caller: AllowList) -> SudoPolicy:
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
        """The datasets both allow, as an AllowList for code that takes one; it carries
        this policy as its ``places`` rule, so every mount and chown made through a
        boundary built from it is checked by ``check_place``."""
        if self.caller is None:
            return AllowList(self.datasets.prefixes, places=self)
        narrowed = [p for p in self.caller.prefixes if self.datasets.allows(p)]
        narrowed += [p for p in self.datasets.prefixes if self.caller.allows(p) and p not in narrowed]
        return AllowList(tuple(narrowed), places=self)

    def check_mountpoint(self, path: str, *, what: str = "mountpoint") -> str:
        """The normalized ``path``, which must lie strictly beneath a ``[mountpoints] under``
        directory: the text only (``check_place`` also looks at the directories)."""
        normal = check_mountpoint(path)
        if not _beneath(normal, self.mountpoints_under):
            raise NotAllowedError(
                f"{what} {normal} is outside the directories {self.source} allows for mountpoints "
                f"({', '.join(self.mountpoints_under) or 'none'})",
                hint="ask the administrator to add a directory to [mountpoints] under",
            )
        return normal

    def check_place(self, path: str, *, what: str = "mountpoint") -> str:
        """The one rule for every path root mounts on, sets as a mountpoint or gives an
        owner, whatever it came from (a flag, a mountpoint inherited from a parent, a
        property read from the pool, a recorded path in recovery): beneath
        ``[mountpoints] under`` (``check_mountpoint``), and every directory from ``/`` to
        its parent existing, root's, writable by nobody else and reached without a
        symbolic link (``hostfs.check_mount_parent``). Then nobody but root can swap the
        path for a link, now or at the next boot's ``zfs mount -a``. Returns the
        normalized path; NotAllowedError (UnsafePathError for a link or a foreign
        directory) otherwise. Reads only: nothing changes."""
        normal = self.check_mountpoint(path, what=what)
        try:
            fd, _ = hostfs.check_mount_parent(normal)
        except FileNotFoundError:
            raise NotAllowedError(
                f"{what} {normal}: the directory above it does not exist",
                hint="ask the administrator to create it (owned by root, not writable by others)",
            ) from None
        except UnsafePathError as exc:
            raise UnsafePathError(
                f"{what} {normal} is refused: {exc.message}; a user who can change a directory on the way "
                "could redirect root's mount there (now, or at the next boot's 'zfs mount -a')",
                hint="directories that hold mountpoints must be root's all the way up; "
                "nest a repository in a root-owned directory, not inside another user's",
            ) from None
        os.close(fd)
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

    def check_properties(self, props: Mapping[str, str]) -> None:
        """NotAllowedError unless ``[properties] allow`` names each of ``props`` (user
        properties a transaction is to be created with: ``begin --property``), by its
        full name or its module (``org.example:``). A caller's property on a repository can
        steer other tools (``syncoid:sync``, a snapshot tool's marks): none is allowed
        unless the policy says so."""
        for key in props:
            if not any(key == name or (name.endswith(":") and key.startswith(name)) for name in self.properties):
                raise NotAllowedError(
                    f"property {key!r} is not one {self.source} allows a caller to set "
                    f"({', '.join(self.properties) or 'none'})",
                    hint="ask the administrator to add it, or its module ('org.example:'), to [properties] allow",
                )

    def check_repository_props(self, dataset: str, props: Mapping[str, str]) -> None:
        """Check the properties that steer root, as read from the pool (anyone who can set
        user properties, or wrote a foreign pool, chose them): see ``check_repository_props``."""
        check_repository_props(props, policy=self, dataset=dataset)


def check_repository_props(
    props: Mapping[str, str], *, policy: SudoPolicy | None = None, dataset: str | None = None
) -> None:
    """Validate ``dsg-storage:path``, ``:mountpoint``, ``:owner``, ``:mode`` and the native
    ``mountpoint`` (a path; inherited ones included) as read from a pool before acting on
    them: well formed always (InvalidArgumentError naming the property), and with
    ``policy`` also inside it, directories included (``SudoPolicy.check_place``:
    NotAllowedError). Absent ones are skipped."""
    where = f" of {dataset}" if dataset else ""
    for key in (prop("path"), prop("mountpoint"), "mountpoint"):
        value = props.get(key)
        if value is None or (key == "mountpoint" and not _placed_by_us(props, value, policy)):
            continue
        try:
            normal = check_mountpoint(value)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"property {key}{where} is unusable: {exc.message}", dataset=dataset) from None
        if policy is not None:
            try:
                policy.check_place(normal, what=f"property {key}{where}:")
            except NotAllowedError as exc:
                raise type(exc)(
                    exc.message, dataset=dataset, hint=exc.hint or "the pool's properties were changed"
                ) from None
    owner = props.get(prop("owner"))
    if owner is not None:
        _check_owner_prop(owner, policy, dataset, where)
    mode = props.get(prop("mode"))
    if mode is not None:
        try:
            parse_mode(mode)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"property {prop('mode')}{where} is unusable: {exc.message}") from None


def _check_owner_prop(owner: str, policy: SudoPolicy | None, dataset: str | None, where: str) -> None:
    try:
        parsed = Owner.parse(owner)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"property {prop('owner')}{where} is unusable: {exc.message}") from None
    if policy is not None and parsed not in policy.owners:
        raise NotAllowedError(
            f"property {prop('owner')}{where} says {parsed}, an owner {policy.source} does not allow",
            dataset=dataset,
        )


def _placed_by_us(props: Mapping[str, str], native: str, policy: SudoPolicy | None) -> bool:
    """Whether the native ``mountpoint`` is one root will act on: a path, on a dataset
    dsg-storage places (it records an owner), checked only against a policy."""
    return policy is not None and native.startswith("/") and prop("owner") in props


def _open_roots_file(path: str, what: str, error: type[PolicyError]) -> int:
    """A descriptor of the regular file ``path``, refused (``error``) unless it and every
    directory above it are root's and writable by nobody else, reached without a link.
    A missing file raises FileNotFoundError."""
    parent, name = posixpath.split(hostfs.absolute_path(path))
    try:
        dirfd = hostfs.open_dir(parent, trusted_uids=(0,))
    except UnsafePathError as exc:
        raise error(f"{what} {path} cannot be trusted: {exc}") from None
    try:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dirfd)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            raise error(f"{what} {path} cannot be opened: {exc.strerror} (a symbolic link?)") from None
    finally:
        os.close(dirfd)
    st = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = f"{what} {path} is not a regular file"
    elif st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problem = (
            f"{what} {path} is owned by uid {st.st_uid} with mode {stat.S_IMODE(st.st_mode):04o}: "
            "it must be root's and writable by nobody else"
        )
    if problem is not None:
        os.close(fd)
        raise error(problem, hint=f"chown root:root {path}; chmod 0644 {path}")
    return fd
