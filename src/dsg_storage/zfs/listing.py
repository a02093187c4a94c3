"""Lists of datasets and snapshots with their properties, two ways: the boundary's reads.

``program_listing.ProgramListing`` asks channel programs (one read each, in the kernel);
it is what every changing call uses. ``CommandListing`` runs ``zfs list``/``zfs get -j -p``: a process of
the ``zfs`` command costs less than loading libzfs_core (whose import parses its C
declarations: ~1 s under emulation, where ``zfs list REPO`` takes ~60 ms), so the
read-only commands (``status``, ``history``, ``snapshot-ok``) list this way and
never load the bindings; and channel programs refuse a pool imported read-only (EROFS),
so offline reads list this way too. Both give the same answers (the same keys, the same
values as text): a real-ZFS test compares them.

Property values may hold tabs and newlines, so ``-H`` text is read only where the
properties asked for are known and the lines must come in their order
(``ZfsCommand.get``), and ``-j`` JSON everywhere else and whenever that text is not of
that shape. The text is read because it costs less: at 1,000 repositories, ``zfs get
-r -j`` of our properties takes 5.3 s and ``-H`` 3.3 s (``zfs list -r`` 3.1 s).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from ..errors import DatasetNotFoundError, ZfsError, ZfsUnavailableError
from ..names import CARRIED_FLAGS, pool_of
from .port import Snapshot
from .programs import u64


class CommandError(ZfsError):
    """The ``zfs`` command failed; ``said``: what it printed on standard error (the
    message also names the command line, whose dataset names are anyone's text)."""

    def __init__(self, message: str, *, said: str, dataset: str | None = None) -> None:
        super().__init__(message, dataset=dataset)
        self.said = said


class ZfsCommand:
    """Runs the ``zfs`` command: its output, or our error (DatasetNotFoundError when it
    says a dataset does not exist). ``preexec``: run in the child before exec (the
    boundary's makes the command die with us instead of racing recovery)."""

    def __init__(self, preexec: Callable[[], None] | None = None) -> None:
        self.preexec = preexec

    def __call__(self, *args: str, stdin: str | None = None) -> str:
        # Imported here: most calls of ours run no command.
        import shutil
        import subprocess

        executable = shutil.which("zfs")
        if executable is None:
            raise ZfsUnavailableError("the 'zfs' command is missing", hint="install zfsutils-linux")
        result = subprocess.run(
            [executable, *args], input=stdin, capture_output=True, text=True, check=False, preexec_fn=self.preexec
        )
        if result.returncode != 0:
            message = result.stderr.strip() or f"exit {result.returncode}"
            if "does not exist" in message:
                raise DatasetNotFoundError(f"zfs {' '.join(args)}: {message}", dataset=args[-1])
            raise CommandError(f"zfs {' '.join(args)}: {message}", said=message, dataset=args[-1])
        return result.stdout

    def json(self, *args: str, missing_ok: bool = False) -> dict[str, dict[str, tuple[str, str]]]:
        """``zfs list|get -j -p ...``: each dataset's properties, name -> (value, source
        type such as LOCAL, RECEIVED, INHERITED, NONE); values as strings (not
        --json-int: OpenZFS 2.3 clamps it at 2**63-1, which garbles GUIDs). ``missing_ok``:
        a dataset that does not exist lists nothing. Output not of that shape is ZfsError."""
        try:
            out = self(args[0], "-j", "-p", *args[1:])
        except DatasetNotFoundError:
            if missing_ok:
                return {}
            raise
        try:
            return _parsed(json.loads(out))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ZfsError(f"zfs {args[0]} -j printed what is not its JSON ({exc!r})", dataset=args[-1]) from exc

    def get(
        self, props: Sequence[str], dataset: str, *options: str, missing_ok: bool = False
    ) -> dict[str, dict[str, tuple[str, str]]]:
        """``zfs get OPTIONS PROPS DATASET`` as ``json`` gives it, read from ``-H`` text
        (``table``); JSON again where the text is not of its shape (a value with a newline)."""
        wanted = ",".join(props)
        try:
            out = self("get", "-H", "-p", "-o", "name,property,value,source", *options, wanted, dataset)
        except DatasetNotFoundError:
            if missing_ok:
                return {}
            raise
        found = table(out, props)
        if found is None:
            return self.json("get", *options, wanted, dataset, missing_ok=missing_ok)
        return found


#: ``zfs get -H``'s source column as the JSON source types.
_SOURCES = {"local": "LOCAL", "received": "RECEIVED", "-": "NONE", "default": "DEFAULT", "temporary": "TEMPORARY"}


def table(out: str, props: Sequence[str]) -> dict[str, dict[str, tuple[str, str]]] | None:
    """``zfs get -H -p -o name,property,value,source PROPS ...`` output as ``ZfsCommand.json``
    gives it, or None where it is not exactly that: every dataset's lines one per
    property of ``props`` in their order, four columns, each dataset once. A value with
    a tab or a newline breaks that shape (the caller reads JSON instead); a value forged
    to look like whole lines of another dataset can only add a name that does not
    exist, never change or hide a real one's (a second block of a listed name is not
    of the shape)."""
    found: dict[str, dict[str, tuple[str, str]]] = {}
    lines = out.split("\n")
    if lines[-1] != "" or (len(lines) - 1) % len(props):
        return None
    current: dict[str, tuple[str, str]] = {}
    name = ""
    for at, line in enumerate(lines[:-1]):
        fields = line.split("\t")
        if len(fields) != 4:
            return None
        expected = props[at % len(props)]
        if at % len(props) == 0:
            name = fields[0]
            if not name or name in found:
                return None
            current = found[name] = {}
        if fields[0] != name or fields[1] != expected:
            return None
        source = _SOURCES.get(fields[3]) or ("INHERITED" if fields[3].startswith("inherited from ") else None)
        if source is None:
            return None
        current[expected] = (fields[2], source)
    return found


def _parsed(document: Any) -> dict[str, dict[str, tuple[str, str]]]:
    found: dict[str, dict[str, tuple[str, str]]] = {}
    for name, info in (document["datasets"] or {}).items():
        props = info.get("properties") or {}
        found[str(name)] = {str(key): (_text(p["value"]), str(p["source"]["type"])) for key, p in props.items()}
    return found


def _text(value: Any) -> str:
    if isinstance(value, dict | list):
        raise TypeError(f"a property value that is not text: {value!r:.40}")
    return str(value)


def _own(props: Mapping[str, tuple[str, str]], prefix: str, *, any_local: bool = False) -> dict[str, str]:
    """Our user properties set on the dataset itself or received with it (what the
    channel programs report: source the dataset, or ``$recvd``); ``any_local``: every
    user property set on it too, ours or not (``programs.FAMILY``)."""
    return {
        key: value
        for key, (value, source) in props.items()
        if ":" in key
        and (source == "LOCAL" or source == "RECEIVED")
        and (key.startswith(prefix) or (any_local and source == "LOCAL"))
    }


#: How ``zfs program`` says the pool refuses or lacks what a read needs: the pool is
#: imported read-only (channel programs need a writable pool, even ``-n``), is not
#: there (the commands then say so as they always did), or uid 0 lacks the privilege
#: (root of a user namespace, where ``zfs get`` may still work).
_PROGRAM_REFUSED = ("pool is read-only", "no such pool", "must be run as root")


class CommandListing:
    """The boundary's lists, read by running ``zfs list``/``zfs get`` (module docstring).

    ``known``: our user properties by name (``names.OUR_PROPS``): snapshots and
    filesystems are then listed by one ``zfs get`` of those and the few native ones
    needed, where ``zfs get all`` would make ZFS work out every native property of every
    snapshot (~40 ms each under emulation: 17 s for 300 snapshots, against 2.6 s). A
    property of ours that this version does not know is then not listed; without
    ``known`` (reading a read-only pool, where a bundle export must carry them all)
    everything of ours is."""

    def __init__(
        self,
        run: ZfsCommand,
        known: Sequence[str] | None = None,
        on_snapshots: Sequence[str] | None = None,
        *,
        programs: bool = False,
    ) -> None:
        self.run = run
        #: root may run channel programs: ``family`` is then one ``zfs program -n``
        self.programs = programs
        self.known = tuple(known) if known is not None else None
        #: those of ``known`` set on snapshots (``names.SNAPSHOT_PROPS``): ZFS looks each
        #: one asked for up on every snapshot
        self.on_snapshots = tuple(on_snapshots) if on_snapshots is not None else self.known

    def snapshots(self, dataset: str, prefix: str) -> list[dict[str, Any]]:
        """Snapshots of ``dataset``: name, guid, createtxg, creation, user (own properties)."""
        if self.on_snapshots is not None:
            natives = ("guid", "createtxg", "creation")
            got = self.run.json("get", "-t", "snapshot", "-d", "1", ",".join((*natives, *self.on_snapshots)), dataset)
            return [
                {"name": name, **{k: props[k][0] for k in natives if k in props}, "user": _own(props, prefix)}
                for name, props in got.items()
            ]
        listed = self.run.json("list", "-t", "snapshot", "-d", "1", "-o", "name,guid,createtxg,creation", dataset)
        local = self.run.json("get", "-t", "snapshot", "-d", "1", "-s", "local,received", "all", dataset)
        return [
            {
                **{key: value for key, (value, _) in info.items()},
                "name": name,
                "user": _own(local.get(name) or {}, prefix),
            }
            for name, info in listed.items()
        ]

    def filesystems(self, under: str, prefix: str) -> dict[str, dict[str, str]]:
        """``under`` and every filesystem below it: own user properties (ours received
        too), ``mountpoint``, ``origin`` for a clone. Empty if ``under`` is absent."""
        if self.known is not None:
            wanted = ("mountpoint", "origin", *self.known)
            got = self.run.get(wanted, under, "-r", "-t", "filesystem", missing_ok=True)
            return {name: self._described(props, props, prefix, family=False) for name, props in got.items()}
        return self._everything_below(under, prefix, family=False)

    def _everything_below(self, under: str, prefix: str, *, family: bool) -> dict[str, dict[str, str]]:
        """Without ``known``: ``under`` and every filesystem below it described from two
        commands, their mountpoints and origins, then every property set on them."""
        listed = self.run.json("list", "-r", "-t", "filesystem", "-o", "name,mountpoint,origin", under, missing_ok=True)
        local = self.run.json("get", "-r", "-t", "filesystem", "-s", "local,received", "all", under, missing_ok=True)
        return {
            name: self._described(info, local.get(name) or {}, prefix, family=family) for name, info in listed.items()
        }

    def exists(self, name: str) -> bool:
        """Whether the filesystem or snapshot ``name`` exists: one ``zfs list`` (~0.1 s
        under emulation, where loading libzfs_core for ``lzc_exists`` costs ~0.7 s)."""
        try:
            self.run("list", "-H", "-o", "name", name)
        except DatasetNotFoundError:
            return False
        return True

    def origin_and_snapshots(
        self, dataset: str, prefix: str, *, guarded: bool = False
    ) -> tuple[str, list[dict[str, Any]]]:
        """``dataset``'s ``origin`` ("" unless a clone) and its snapshots as ``snapshots``
        lists them (with ``guarded``, each with ``userrefs`` and ``clones`` as
        ``snapshot_guards`` reads them): with the snapshot properties known, one ``zfs get
        -d 1 -t filesystem,snapshot`` of only what a snapshot list asks for and ``origin``
        (each property asked costs a lookup per snapshot; its child filesystems are left
        out). ``history`` and ``prune --dry-run`` read this way: one ``zfs`` process, where
        each walk of the snapshots costs about the same whatever it asks. As JSON, like
        ``snapshots``: a commit message may hold a newline, which ``-H`` text cannot carry
        (``get`` would then run a second, JSON read of every snapshot)."""
        if self.on_snapshots is None:
            return origin_and_snapshots_of(self, dataset, prefix, guards_of=self.snapshot_guards if guarded else None)
        natives = ("guid", "createtxg", "creation")
        wanted = ",".join((*natives, "origin", *(_GUARDS if guarded else ()), *self.on_snapshots))
        got = self.run.json("get", "-d", "1", "-t", "filesystem,snapshot", wanted, dataset)
        head = got.get(dataset)
        if head is None:
            raise ZfsError(f"zfs get listed snapshots of {dataset} but not {dataset} itself", dataset=dataset)
        snapshots = [
            {
                "name": name,
                **{k: props[k][0] for k in natives if k in props},
                "user": _own(props, prefix),
                **(_guards_of(name, props) if guarded else {}),
            }
            for name, props in got.items()
            if name.startswith(dataset + "@")
        ]
        origin = head.get("origin", ("-", ""))[0]
        return ("" if origin == "-" else origin), snapshots

    def snapshot_guards(self, dataset: str) -> dict[str, tuple[int, list[str]]]:
        """For each snapshot of ``dataset``: (number of holds, clones made from it), from
        one ``zfs get userrefs,clones``."""
        got = self.run.json("get", "-t", "snapshot", "-d", "1", ",".join(_GUARDS), dataset)
        guards: dict[str, tuple[int, list[str]]] = {}
        for name, props in got.items():
            read = _guards_of(name, props)
            guards[name] = (read["userrefs"], read["clones"])
        return guards

    def families(self, under: str, prefix: str) -> dict[str, dict[str, str]]:
        """``under`` and every filesystem below it, described as ``family`` describes its
        members, except that with ``known`` properties of ours the properties other tools
        set are left out (a plan made from them alone is never carried out: see
        ``core.pool``). One command (two without ``known``)."""
        if self.known is None:
            return self._everything_below(under, prefix, family=True)
        wanted = ("mountpoint", "origin", "zoned", *CARRIED_FLAGS, *self.known)
        got = self.run.get(wanted, under, "-r", "-t", "filesystem", missing_ok=True)
        return {name: self._described(props, props, prefix, family=True) for name, props in got.items()}

    def family(self, dataset: str, prefix: str) -> dict[str, dict[str, str]]:
        """``dataset`` and its ``dataset.dsg-*`` siblings, described as ``programs.FAMILY``
        describes them; the parent with its mountpoint. With ``programs``, that program
        itself through ``zfs program -n`` (one process; the kernel walks the siblings);
        where the pool refuses it (imported read-only), or otherwise, two commands
        whatever the number of siblings: the parent's children by name alone, then every
        property (with its source) of the parent and the members."""
        if self.programs:
            found = self._family_program(dataset, prefix)
            if found is not None:
                return found
        parent, mark = dataset.rsplit("/", 1)[0], dataset + ".dsg-"
        for _ in range(3):  # a member destroyed between the two commands: list again
            try:
                children = self.run("list", "-H", "-d", "1", "-t", "filesystem", "-o", "name", parent).splitlines()
            except DatasetNotFoundError:
                return {}
            members = [n for n in children if n != parent and (n == dataset or n.startswith(mark))]
            try:
                props = self.run.json("get", "all", parent, *members)
                break
            except DatasetNotFoundError:
                continue
        else:
            raise ZfsError(f"the datasets of {dataset} kept changing while they were listed", dataset=dataset)
        missing = [name for name in (parent, *members) if name not in props]
        if missing:
            raise ZfsError(f"zfs get listed no properties of {', '.join(missing)}", dataset=dataset)
        found = {name: self._described(props[name], props[name], prefix, family=True) for name in members}
        found[parent] = {"mountpoint": props[parent].get("mountpoint", ("none", ""))[0]}
        return found

    def _family_program(self, dataset: str, prefix: str) -> dict[str, dict[str, str]] | None:
        """``programs.FAMILY`` run by the ``zfs`` command (its source on standard input),
        as ``ProgramListing.family`` answers; None where the pool refuses channel
        programs (imported read-only) or does not exist (the commands then answer)."""
        from . import programs

        parent = dataset.rsplit("/", 1)[0]
        try:
            out = self.run(
                "program", "-n", "-j", pool_of(dataset), "/dev/stdin", parent, dataset, prefix, stdin=programs.FAMILY
            )
        except CommandError as exc:
            if any(refusal in exc.said for refusal in _PROGRAM_REFUSED):
                return None
            raise
        try:
            raw = json.loads(out)["return"] or {}
            return {str(name): dict(props) for name, props in raw.items()}
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ZfsError(f"zfs program -j printed what is not its JSON ({exc!r})", dataset=dataset) from exc

    @staticmethod
    def _described(
        listed: Mapping[str, tuple[str, str]], own: Mapping[str, tuple[str, str]], prefix: str, *, family: bool
    ) -> dict[str, str]:
        props = _own(own, prefix, any_local=family)
        if family:
            ours = [source for key, (_, source) in own.items() if key.startswith(prefix)]
            if "RECEIVED" in ours and "LOCAL" not in ours:
                props["@received"] = "yes"  # a replica of another host's dataset (FAMILY)
            if own.get("zoned", ("", ""))[1] == "LOCAL":
                props["zoned"] = own["zoned"][0]
            for flag in CARRIED_FLAGS:
                if own.get(flag, ("", ""))[1] in ("LOCAL", "RECEIVED"):
                    props[flag] = own[flag][0]
        origin = listed.get("origin", ("-", ""))[0]
        if origin not in ("", "-"):
            props["origin"] = origin
        props["mountpoint"] = listed.get("mountpoint", ("none", ""))[0]
        return props


class Listing(Protocol):
    """What ``origin_and_snapshots_of`` reads: either way of listing."""

    def snapshots(self, dataset: str, prefix: str) -> list[dict[str, Any]]: ...

    def filesystems(self, under: str, prefix: str) -> dict[str, dict[str, str]]: ...


def origin_and_snapshots_of(
    listing: Listing,
    dataset: str,
    prefix: str,
    *,
    guards_of: Callable[[str], Mapping[str, tuple[int, list[str]]]] | None = None,
) -> tuple[str, list[dict[str, Any]]]:
    """``origin_and_snapshots`` as separate reads of ``listing``: the snapshots first
    (they say when the dataset does not exist), then the dataset's ``origin``, then (with
    ``guards_of``) the snapshots' guards; a snapshot destroyed in between has none (0
    holds: prune's destroy of it then fails and is reported as skipped, not fatal)."""
    snapshots = listing.snapshots(dataset, prefix)
    origin = (listing.filesystems(dataset, prefix).get(dataset) or {}).get("origin", "")
    if guards_of is not None:
        guards = guards_of(dataset)
        for item in snapshots:
            refs, clones = guards.get(item["name"], (0, []))
            item.update(userrefs=refs, clones=clones)
    return origin, snapshots


#: The properties that say what keeps a snapshot: its holds and its clones.
_GUARDS = ("userrefs", "clones")


def _guards_of(name: str, props: Mapping[str, tuple[str, str]]) -> dict[str, Any]:
    """A snapshot's ``userrefs`` (a number) and ``clones`` (a list of names) from ``zfs
    get``'s JSON: ``clones`` is names joined by commas, ``-`` or empty for none (a dataset
    name has no comma)."""
    refs, clones = props.get("userrefs", ("0", ""))[0], props.get("clones", ("", ""))[0]
    if not refs.isdigit():
        raise ZfsError(f"zfs get printed userrefs {refs!r} for {name}", dataset=name.split("@", 1)[0])
    return {"userrefs": int(refs), "clones": [c for c in clones.split(",") if c and c != "-"]}


def snapshot_of(item: Mapping[str, Any]) -> Snapshot:
    """A listed snapshot (either listing's shape) as a ``Snapshot``."""
    try:
        return Snapshot(
            name=item["name"],
            guid=u64(item["guid"]),
            createtxg=int(item["createtxg"]),
            creation=int(item["creation"]),
            user_props=dict(item.get("user") or {}),
            holds=int(item["userrefs"]) if "userrefs" in item else None,
            clones=tuple(item["clones"]) if "clones" in item else None,
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise ZfsError(f"a snapshot listed without its {exc}: {dict(item)!r:.200}") from exc
