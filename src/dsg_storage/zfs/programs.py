"""Channel programs (Lua run by ZFS in syncing context) and the Batch of changes.

Reads that would otherwise take one ioctl per dataset or a ``zfs`` process are one
program each; every change that must land in one ZFS sync task with the state that
guards it is a ``Batch``. pyzfs passes ``params`` as ``args["argv"]`` (a table).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from ..names import CARRIED_FLAGS


def u64(value: int) -> int:
    """nvlists hand uint64 values (GUIDs) to Lua and back as signed int64."""
    return int(value) & 0xFFFFFFFFFFFFFFFF


def on_off(value: object) -> str:
    """An on/off property as a channel program reports it, by name or by number
    (``on``/``1``, ``off``/``0``), as its name; anything else (absent: None) as text."""
    return {"1": "on", "0": "off"}.get(str(value), str(value))


def decode(value: Any) -> Any:
    """Channel-program results come back as nested dicts of bytes: make them str."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, dict):
        return {decode(k): decode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [decode(v) for v in value]
    return value


LUA_PREAMBLE = """
local argv = (...)["argv"]
"""

# Read properties of several datasets at once: argv = {dataset, prop, prop, ...}.
READ_PROPS = (
    LUA_PREAMBLE
    + """
local ds = argv[1]
local out = {}
if not zfs.exists(ds) then return {exists = 0} end
for i = 2, #argv do
    local value, source = zfs.get_prop(ds, argv[i])
    if value ~= nil then out[argv[i]] = value end
end
return {exists = 1, props = out}
"""
)

SNAPSHOTS = (
    LUA_PREAMBLE
    + """
local out = {}
local n = 0
for snap in zfs.list.snapshots(argv[1]) do
    n = n + 1
    local user = {}
    for name, value, source in zfs.list.user_properties(snap) do
        -- only the snapshot's own (set here, or received with it: "$recvd"); a snapshot
        -- also shows its dataset's user properties
        if (source == snap or source == "$recvd") and string.sub(name, 1, #argv[2]) == argv[2] then
            user[name] = value
        end
    end
    out[string.format("%08d", n)] = {
        name = snap,
        guid = zfs.get_prop(snap, "guid"),
        createtxg = zfs.get_prop(snap, "createtxg"),
        creation = zfs.get_prop(snap, "creation"),
        user = user,
    }
end
return out
"""
)

# What other tools made of one of our temporary datasets since a transaction began:
# argv = {dataset, written_of, base snapshot, ...}: the base's full name where it may be
# (the first that exists counts). The snapshots of the dataset created after the base
# (all of them when it is gone), each with its holds' tags, and its bookmarks, keyed by
# short name; the base found; and, when written_of names a filesystem, its written@base
# (a commit's conflict check, of the same moment: one read instead of three).
FOREIGN = (
    LUA_PREAMBLE
    + """
local ds, written_of = argv[1], argv[2]
local out = {snapshots = {}, bookmarks = {}}
local after = 0
for i = 3, #argv do
    if after == 0 and zfs.exists(argv[i]) then
        after = zfs.get_prop(argv[i], "createtxg")
        out.base = argv[i]
    end
end
if out.base ~= nil and written_of ~= "" and zfs.exists(written_of) then
    out.written = zfs.get_prop(written_of, "written@" .. out.base)
end
if not zfs.exists(ds) then return out end
for snap in zfs.list.snapshots(ds) do
    local txg = zfs.get_prop(snap, "createtxg")
    if txg > after then
        local holds = {}
        for tag in zfs.list.holds(snap) do holds[tag] = 1 end
        out.snapshots[string.sub(snap, #ds + 2)] = {createtxg = txg, holds = holds}
    end
end
-- A channel program cannot read a bookmark's properties; every bookmark of one of our
-- temporaries is another tool's (a promote takes those before the base along with the
-- snapshots), so all of them count.
for bookmark in zfs.list.bookmarks(ds) do out.bookmarks[string.sub(bookmark, #ds + 2)] = 1 end
return out
"""
)

CHILDREN = (
    LUA_PREAMBLE
    + """
local out = {}
local n = 0
for child in zfs.list.children(argv[1]) do
    n = n + 1
    out[string.format("%08d", n)] = child
end
return out
"""
)

# Every filesystem at or under argv[1], with its own user properties under argv[2], its
# mountpoint and (for a clone) its origin: the repository list.
FILESYSTEMS = (
    LUA_PREAMBLE
    + """
local out = {}
local function visit(ds)
    local props = {}
    for name, value, source in zfs.list.user_properties(ds) do
        if (source == ds or source == "$recvd") and string.sub(name, 1, #argv[2]) == argv[2] then
            props[name] = value
        end
    end
    props["mountpoint"] = zfs.get_prop(ds, "mountpoint")
    local origin = zfs.get_prop(ds, "origin")
    if origin ~= nil then props["origin"] = origin end
    out[ds] = props
    for child in zfs.list.children(ds) do visit(child) end
end
if zfs.exists(argv[1]) then visit(argv[1]) end
return out
"""
)

# argv = {dataset, name, value, name, value, ...}; checked first so a bad one changes nothing.
# A batch of changes in one ZFS sync task (all or, for "T" ops, best effort). argv is a
# flat list of ops: S name (snapshot) | P fs (promote, if it is a clone) | Q fs (try to promote;
# a refusal is reported, not fatal) | D name (destroy) | T name (try to
# destroy; a failure is reported, not fatal) | V ds prop value (set a user property on an
# existing dataset) | N snap prop value (set a user property on a snapshot this batch
# creates) | U fs snapname (require fs unchanged since its snapshot) | A name (require
# name absent) | I ds prop (clear a local user or inheritable native property: zfs.sync.inherit). Every op that can be checked is checked first, so a refused batch changes
# nothing; except promote, whose check walks every older snapshot (as long as the promote
# itself) and which zfs.sync.promote checks anyway: callers put it before any op whose
# partial effect would matter. Running in syncing context, the checks see every write made before the call.
# NOT atomic against signals: a caller killed while the program runs interrupts it after
# any op, keeping the ops already done. Callers order ops so every prefix is recoverable.
BATCH = (
    LUA_PREAMBLE
    + """
local ops = {}
local i = 1
while i <= #argv do
    local op = argv[i]
    if op == "V" or op == "N" then
        ops[#ops + 1] = {op, argv[i + 1], argv[i + 2], argv[i + 3]}
        i = i + 4
    elseif op == "U" or op == "I" or op == "R" then
        ops[#ops + 1] = {op, argv[i + 1], argv[i + 2]}
        i = i + 3
    elseif op == "B" then
        ops[#ops + 1] = {op, argv[i + 1], argv[i + 2], argv[i + 3], argv[i + 4], argv[i + 5]}
        i = i + 6
    else
        ops[#ops + 1] = {op, argv[i + 1]}
        i = i + 2
    end
end
for k = 1, #ops do
    local o = ops[k]
    local err = 0
    if o[1] == "S" then err = zfs.check.snapshot(o[2])
    elseif o[1] == "D" then err = zfs.check.destroy(o[2])
    elseif o[1] == "V" then err = zfs.check.set_prop(o[2], o[3], o[4])
    elseif o[1] == "B" then err = zfs.check.set_prop(o[3], o[4], o[5])
    elseif o[1] == "I" then err = zfs.check.inherit(o[2], o[3])
    elseif o[1] == "A" and zfs.exists(o[2]) then err = 17
    elseif o[1] == "U" then
        local written = zfs.get_prop(o[2], "written@" .. o[3])
        if written ~= 0 then return {failed = k, err = 0, written = written} end
    end
    if err ~= 0 then return {failed = k, err = err} end
end
local skipped = {}
local created = {}
for k = 1, #ops do
    local o = ops[k]
    if o[1] == "S" then
        assert(zfs.sync.snapshot(o[2]) == 0)
        created[o[2]] = {guid = zfs.get_prop(o[2], "guid"), createtxg = zfs.get_prop(o[2], "createtxg")}
    elseif o[1] == "P" then
        if zfs.get_prop(o[2], "origin") ~= nil then assert(zfs.sync.promote(o[2]) == 0) end
    elseif o[1] == "Q" then
        if zfs.get_prop(o[2], "origin") ~= nil then
            local e = zfs.sync.promote(o[2])
            if e ~= 0 then skipped[o[2]] = e end
        end
    elseif o[1] == "D" then assert(zfs.sync.destroy(o[2]) == 0)
    elseif o[1] == "T" then
        if zfs.exists(o[2]) then  -- gone already: nothing left to do
            local e = zfs.sync.destroy(o[2])
            if e ~= 0 then skipped[o[2]] = e end
        end
    elseif o[1] == "V" or o[1] == "N" then assert(zfs.sync.set_prop(o[2], o[3], o[4]) == 0)
    elseif o[1] == "I" then assert(zfs.sync.inherit(o[2], o[3]) == 0)
    elseif o[1] == "B" then
        -- destroy if possible; the list on o[3] says what is left, so recovery retries it
        local left = o[6]
        if zfs.exists(o[2]) then
            local e = zfs.sync.destroy(o[2])
            if e ~= 0 then skipped[o[2]] = e; left = o[5] end
        end
        assert(zfs.sync.set_prop(o[3], o[4], left) == 0)
    elseif o[1] == "R" then
        local at = string.find(o[2], "@", 1, true)
        local target = string.sub(o[2], 1, at) .. o[3]
        if zfs.exists(o[2]) and not zfs.exists(target) then
            local e = zfs.sync.rename_snapshot(string.sub(o[2], 1, at - 1), string.sub(o[2], at + 1), o[3])
            if e ~= 0 then skipped[o[2]] = e end
        end
    end
end
return {failed = 0, skipped = skipped, created = created}
"""
)

# How FAMILY and FAMILIES describe one filesystem: the user properties set on it, ours
# received with it, its origin, its mountpoint, its own zoned value (only when set on
# it) and its names.CARRIED_FLAGS set on it or received; "@received" when our properties
# were all received, none set here (a replica).
_DESCRIBE = (
    "local CARRIED = {"
    + ", ".join(f'"{flag}"' for flag in CARRIED_FLAGS)
    + "}"
    + """
local function describe(ds, prefix)
    local props = {}
    local mine, received = 0, 0
    for prop, value, source in zfs.list.user_properties(ds) do
        local ours = string.sub(prop, 1, #prefix) == prefix
        if source == ds or (source == "$recvd" and ours) then props[prop] = value end
        if ours and source == ds then mine = mine + 1 end
        if ours and source == "$recvd" then received = received + 1 end
    end
    if received > 0 and mine == 0 then props["@received"] = "yes" end
    local origin = zfs.get_prop(ds, "origin")
    if origin ~= nil then props["origin"] = origin end
    props["mountpoint"] = zfs.get_prop(ds, "mountpoint")
    local zoned, source = zfs.get_prop(ds, "zoned")
    if source == ds then props["zoned"] = zoned end
    for _, flag in ipairs(CARRIED) do
        local value, from = zfs.get_prop(ds, flag)
        if from == ds or from == "$recvd" then props[flag] = value end
    end
    return props
end
"""
)

# A dataset and its siblings whose names start with NAME.dsg- (dsg-storage's temporary
# datasets), each described (above); the parent with its mountpoint only.
FAMILY = (
    LUA_PREAMBLE
    + _DESCRIBE
    + """
local parent, name, prefix = argv[1], argv[2], argv[3]
local mark = name .. ".dsg-"
local out = {}
if not zfs.exists(parent) then return out end
for child in zfs.list.children(parent) do
    if child == name or string.sub(child, 1, #mark) == mark then out[child] = describe(child, prefix) end
end
out[parent] = {mountpoint = zfs.get_prop(parent, "mountpoint")}
return out
"""
)

# Every filesystem at or under argv[1], each described as FAMILY describes its members:
# the families of all the repositories below it in one read (``recover --pool``).
FAMILIES = (
    LUA_PREAMBLE
    + _DESCRIBE
    + """
local out = {}
local function visit(ds)
    out[ds] = describe(ds, argv[2])
    for child in zfs.list.children(ds) do visit(child) end
end
if zfs.exists(argv[1]) then visit(argv[1]) end
return out
"""
)


def together(sources: Sequence[str]) -> str:
    """One read-only program running the read programs ``sources`` (each ``LUA_PREAMBLE``
    and a body) one after the other, each as a function of its own part of argv: argv =
    {n1, the first's n1 arguments, n2, ...}. Returns {"1" = the first's result, ...}."""
    parts = [
        'local all = (...)["argv"]',
        "local out, at = {}, 1",
        "local function part()",
        "    local n, own = tonumber(all[at]), {}",
        "    for j = 1, n do own[j] = all[at + j] end",
        "    at = at + n + 1",
        "    return own",
        "end",
    ]
    for i, source in enumerate(sources, 1):
        if not source.startswith(LUA_PREAMBLE):
            raise ValueError("not a read program of ours")
        parts += [f"local function read{i}(argv)", source[len(LUA_PREAMBLE) :], "end", f'out["{i}"] = read{i}(part())']
    return "\n".join([*parts, "return out"])


@attrs.frozen
class BatchResult:
    skipped: dict[str, int]  # optional destroys that failed: name -> errno
    created: dict[str, tuple[int, int]]  # snapshots made: name -> (guid, createtxg)


@attrs.frozen
class Batch:
    """Changes to apply in one ZFS sync task (see ``Zfs.apply``): an immutable value, so
    a plan can hold it and print it; each method returns a longer batch."""

    ops: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()  # one per op, to name the one that failed

    def snapshot(self, name: str, props: Mapping[str, str] | None = None) -> Batch:
        batch = self._add(name, "S", name)
        for key, value in (props or {}).items():
            batch = batch._add(name, "N", name, key, value)
        return batch

    def set(self, dataset: str, props: Mapping[str, str]) -> Batch:
        return self.set_each([(dataset, props)])

    def set_each(self, changes: Iterable[tuple[str, Mapping[str, str]]]) -> Batch:
        """``set`` of each (dataset or snapshot, its properties), in order, as one longer
        batch: a bundle's snapshots (up to 100,000) ``set`` one by one would copy the
        growing batch each time (10,000 took 6.7 s natively)."""
        ops: list[str] = []
        targets: list[str] = []
        for name, props in changes:
            for key, value in props.items():
                ops += ("V", name, key, value)
                targets.append(name)
        return Batch(self.ops + tuple(ops), self.targets + tuple(targets))

    def promote(self, filesystem: str, *, required: bool = True) -> Batch:
        """Promote ``filesystem`` if it is a clone (so a repeated batch is harmless);
        not ``required``: a refusal (a snapshot it would take over is mounted, i.e. held)
        is reported in the result's ``skipped`` instead of failing the batch."""
        return self._add(filesystem, "P" if required else "Q", filesystem)

    def destroy(self, name: str, *, required: bool = True) -> Batch:
        return self._add(name, "D" if required else "T", name)

    def inherit(self, dataset: str, prop: str) -> Batch:
        """Clear ``dataset``'s local value of the user property or inheritable native
        property ``prop`` (``zfs inherit``: the one native-property change a channel
        program can make)."""
        return self._add(dataset, "I", dataset, prop)

    def destroy_noted(self, snapshot: str, dataset: str, prop: str, *, if_kept: str, if_gone: str) -> Batch:
        """Destroy ``snapshot`` if possible (optional), and set ``dataset``'s user property
        ``prop`` to ``if_kept`` when it could not be, else to ``if_gone``: the pool itself
        says what is left to retry (``core.retire``)."""
        return self._add(snapshot, "B", snapshot, dataset, prop, if_kept, if_gone)

    def rename_snapshot(self, snapshot: str, short: str) -> Batch:
        """Rename ``snapshot`` (full name) to ``short`` on its dataset, if it exists and
        the new name is free; a refusal is reported in the result's ``skipped``."""
        return self._add(snapshot, "R", snapshot, short)

    def require_unchanged(self, filesystem: str, snapshot: str) -> Batch:
        """Refuse the batch (DatasetChangedError) if ``filesystem`` was written after
        ``snapshot`` (its short name)."""
        return self._add(filesystem, "U", filesystem, snapshot)

    def require_absent(self, name: str) -> Batch:
        """Refuse the batch (DatasetExistsError) if ``name`` exists."""
        return self._add(name, "A", name)

    def __add__(self, other: Batch) -> Batch:
        return Batch(self.ops + other.ops, self.targets + other.targets)

    def _add(self, target: str, *op: str) -> Batch:
        return Batch(self.ops + op, (*self.targets, target))

    def describe(self) -> list[str]:
        """The batch's changes, one line each (for dry runs and logs)."""
        words = {
            "S": "snapshot",
            "P": "promote",
            "Q": "promote if possible",
            "D": "destroy",
            "T": "destroy if possible",
            "A": "require absent",
        }
        lines, i = [], 0
        while i < len(self.ops):
            op = self.ops[i]
            if op in ("V", "N"):
                lines.append(f"set {self.ops[i + 2]}={self.ops[i + 3]!r} on {self.ops[i + 1]}")
                i += 4
            elif op == "U":
                lines.append(f"require {self.ops[i + 1]} unchanged since @{self.ops[i + 2]}")
                i += 3
            elif op == "I":
                lines.append(f"inherit {self.ops[i + 2]} on {self.ops[i + 1]} (clear its local value)")
                i += 3
            elif op == "R":
                lines.append(f"rename {self.ops[i + 1]} to @{self.ops[i + 2]} if it is free")
                i += 3
            elif op == "B":
                lines.append(f"destroy if possible {self.ops[i + 1]}")  # what is left is noted: retried
                i += 6
            else:
                lines.append(f"{words[op]} {self.ops[i + 1]}")
                i += 2
        return lines
