"""The userland reader's helper process: OpenZFS's libzpool, in this process only.

Run as a script (standard library only, never imported by dsg_storage), by a Python
started through the private userland's own loader (see ``userland/provision.py``):

    ld-linux-x86-64.so.2 --library-path LIBS python3 -I -S helper.py LIBZPOOL LIBNVPAIR

It speaks the protocol of ``userland/protocol.py``: one JSON request a line on stdin,
JSON lines back on the protocol descriptor (stdout as it was at start; libzpool's own
chatter goes to stderr); file bytes go into the window, a shared memory file the parent
made and passed (``window``), and the reply says how many.

libzpool runs with ``kernel_init(SPA_MODE_READ)``: every pool it imports is read-only and
its devices are opened ``O_RDONLY``. The pool is imported into this process's private
namespace (never the kernel's), so its name never clashes with an imported one. A
``VERIFY`` failure inside libzpool aborts this process: the parent reports that, with
the end of our stderr, as an error of its own. Nothing is torn down at the end
(``os._exit``): nothing was written, and libzpool's ``kernel_fini`` is known to hang.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import sys
from ctypes import POINTER, byref, c_char_p, c_int, c_uint16, c_uint32, c_uint64, c_void_p
from typing import Any

PROTOCOL = 2
SPA_MODE_READ = 1
ZFS_IMPORT_SKIP_MMP = 0x20
DS_FIND_SNAPSHOTS, DS_FIND_CHILDREN = 1, 2
SA_HDL_PRIVATE = 1
MASTER_NODE_OBJ = 1
DMU_OST_ZFS = 2
# enum zpl_attr_t (sys/zfs_sa.h), the order of zfs_attr_table
ZPL = {
    name: index
    for index, name in enumerate(
        [
            "atime",
            "mtime",
            "ctime",
            "crtime",
            "gen",
            "mode",
            "size",
            "parent",
            "links",
            "xattr",
            "rdev",
            "flags",
            "uid",
            "gid",
            "pad",
            "znode_acl",
            "dacl_count",
            "symlink",
            "scanstamp",
            "dacl_aces",
            "dxattr",
            "projid",
        ]
    )
}
ZPL_END = len(ZPL)
CHUNK = 1 << 20
#: The ARC's bounds (its minimum is the least arc_tuning_update accepts: two of the
#: largest blocks, 2 << SPA_MAXBLOCKSHIFT).
ARC_MIN, ARC_MAX = 32 << 20, 64 << 20
MAX_NAME = 1024  # zap_attribute_alloc's name buffer (ZAP_MAXNAMELEN)
#: Extended attributes sent per file at most, and the largest value sent (Linux's
#: XATTR_SIZE_MAX); a larger one is sent as null. The parent bounds them further.
MAX_XATTRS = 256
MAX_XATTR_VALUE = 64 << 10
#: Bytes of values sent per file at most (the parent shows 64 KiB of ``user.*`` ones).
MAX_XATTR_TOTAL = 1 << 20
OTHER_NAMESPACES = ("trusted.", "security.", "system.")
DATA_TYPE_BYTE_ARRAY = 10
DCP_CMD_NONE = 0
EACCES, EEXIST, ECKSUM = 13, 17, 52  # ECKSUM is EBADE in libzpool


class ImportArgs(ctypes.Structure):  # importargs_t (libzutil.h, OpenZFS 2.3)
    _fields_ = [
        ("path", POINTER(c_char_p)),
        ("paths", c_int),
        ("poolname", c_char_p),
        ("guid", c_uint64),
        ("cachefile", c_char_p),
        ("can_be_active", c_int),
        ("scan", c_int),
        ("policy", c_void_p),
        ("do_destroyed", c_int),
        ("do_all", c_int),
    ]


class LibpcHandle(ctypes.Structure):  # libpc_handle_t
    _fields_ = [
        ("lpc_error", c_int),
        ("lpc_printerr", c_int),
        ("lpc_open_access_error", c_int),
        ("lpc_desc_active", c_int),
        ("lpc_desc", ctypes.c_char * 1024),
        ("lpc_ops", c_void_p),
        ("lpc_lib_handle", c_void_p),
    ]


class ZapAttribute(ctypes.Structure):  # zap_attribute_t's fixed part
    _fields_ = [
        ("za_integer_length", c_int),
        ("za_normalization_conflict", c_int),
        ("za_num_integers", c_uint64),
        ("za_first_integer", c_uint64),
        ("za_name_len", c_uint32),
        ("za_pad", c_uint32),
    ]


def linux_name(stored: str) -> str:
    """As ``read/xattrs.linux_name`` (this script imports nothing of ours)."""
    return stored if stored.startswith((*OTHER_NAMESPACES, "user.")) else "user." + stored


class SaBulkAttr(ctypes.Structure):  # sa_bulk_attr_t (sys/sa.h)
    _fields_ = [
        ("sa_data", c_void_p),
        ("sa_data_func", c_void_p),
        ("sa_length", c_uint16),
        ("sa_attr", c_uint16),
        ("sa_addr", c_void_p),
        ("sa_buftype", c_uint16),
        ("sa_size", c_uint16),
    ]


#: The attributes every znode has, read in one sa_bulk_lookup: (name, 64-bit words).
FIXED = (("mode", 1), ("size", 1), ("uid", 1), ("gid", 1), ("links", 1), ("parent", 1))
TIMES = ("atime", "mtime", "ctime")
S_IFMT, S_IFDIR, S_IFLNK, S_IFREG = 0o170000, 0o040000, 0o120000, 0o100000
#: Directories whose objects resolve() remembers (a read-only pool never changes them).
MAX_REMEMBERED = 65536
#: A walk's entries go out in batches of at most this many, or about this many bytes.
BATCH_ENTRIES, BATCH_BYTES = 512, 1 << 20


class Objset:
    """One held filesystem or snapshot: its objset, SA table and a reusable bulk lookup
    of the FIXED and TIMES attributes (the helper is single-threaded)."""

    def __init__(self, handle: int, table: Any) -> None:
        self.handle = c_void_p(handle)
        self.table = table
        words = sum(n for _, n in FIXED) + 2 * len(TIMES)
        self.values = (c_uint64 * words)()
        self.bulk = (SaBulkAttr * (len(FIXED) + len(TIMES)))()
        base, at = ctypes.addressof(self.values), 0
        for i, (attr, n) in enumerate([*FIXED, *((t, 2) for t in TIMES)]):
            self.bulk[i].sa_attr = table[ZPL[attr]]
            self.bulk[i].sa_data = base + 8 * at
            self.bulk[i].sa_length = 8 * n
            at += n


class Failed(Exception):
    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err


class Zpool:
    """libzpool and libnvpair through ctypes; one imported pool."""

    def __init__(self, libzpool: str, libnvpair: str) -> None:
        self.z = ctypes.CDLL(libzpool, mode=ctypes.RTLD_GLOBAL)
        self.nv = ctypes.CDLL(libnvpair, mode=ctypes.RTLD_GLOBAL)
        z, nv = self.z, self.nv
        for name in ("nvlist_next_nvpair", "nvpair_name", "nvpair_value_nvlist"):
            getattr(nv, name).restype = c_void_p
        nv.nvlist_next_nvpair.argtypes = [c_void_p, c_void_p]
        nv.nvpair_name.argtypes = [c_void_p]
        nv.nvpair_name.restype = c_char_p
        nv.nvpair_type.argtypes = [c_void_p]
        for name in ("zpool_search_import", "dmu_objset_ds", "dmu_objset_pool", "zap_attribute_alloc"):
            getattr(z, name).restype = c_void_p
        z.zpool_search_import.argtypes = [c_void_p, c_void_p]
        z.dmu_objset_ds.argtypes = z.dmu_objset_pool.argtypes = [c_void_p]
        z.spa_import.argtypes = [c_char_p, c_void_p, c_void_p, c_uint64]
        z.dmu_read.argtypes = [c_void_p, c_uint64, c_uint64, c_uint64, c_void_p, c_uint32]
        z.zap_lookup.argtypes = [c_void_p, c_uint64, c_char_p, c_uint64, c_uint64, c_void_p]
        z.zap_cursor_init.argtypes = [c_void_p, c_void_p, c_uint64]
        z.sa_handle_get.argtypes = [c_void_p, c_uint64, c_void_p, c_int, c_void_p]
        z.sa_lookup.argtypes = [c_void_p, c_uint16, c_void_p, c_uint32]
        z.sa_size.argtypes = [c_void_p, c_uint16, c_void_p]
        z.sa_handle_destroy.argtypes = [c_void_p]
        nv.nvlist_unpack.argtypes = [c_char_p, ctypes.c_size_t, c_void_p, c_int]
        nv.nvlist_free.argtypes = [c_void_p]
        nv.fnvlist_alloc.restype = c_void_p
        nv.fnvlist_free.argtypes = [c_void_p]
        nv.fnvlist_add_uint8_array.argtypes = [c_void_p, c_char_p, c_void_p, c_uint32]
        z.dsl_crypto_params_create_nvlist.argtypes = [c_int, c_void_p, c_void_p, c_void_p]
        z.dsl_crypto_params_free.argtypes = [c_void_p, c_int]
        z.spa_keystore_load_wkey.argtypes = [c_char_p, c_void_p, c_int]
        # The ARC's bounds before kernel_init sizes it, as zdb sets them: libzpool's own
        # default is most of the machine's memory (5/8 of it, never given back), and a
        # reader streams files once, so a small cache costs nothing.
        c_uint64.in_dll(z, "zfs_arc_min").value = ARC_MIN
        c_uint64.in_dll(z, "zfs_arc_max").value = ARC_MAX
        z.kernel_init(SPA_MODE_READ)
        self.pool: str | None = None
        self.objsets: dict[str, Objset] = {}
        self.dirs: dict[tuple[str, str], int] = {}  # (dataset, path) -> directory object
        self.window: Any = None  # the parent's shared memory (window()), as a ctypes array
        self._tag = ctypes.create_string_buffer(b"dsg-storage-userland")

    # ------------------------------------------------------------------ nvlists
    def nvlist(self, nvl: int, depth: int = 0) -> dict[str, Any]:
        """An nvlist as a dict: numbers, strings, booleans, nested nvlists (arrays of them)."""
        nv = self.nv
        out: dict[str, Any] = {}
        pair = nv.nvlist_next_nvpair(nvl, None)
        while pair:
            name = nv.nvpair_name(pair).decode("utf-8", "replace")
            out[name] = self._value(pair, nv.nvpair_type(pair), depth)
            pair = nv.nvlist_next_nvpair(nvl, c_void_p(pair))
        return out

    def _value(self, pair: int, kind: int, depth: int) -> Any:
        nv, p = self.nv, c_void_p(pair)
        if kind in (7, 8):  # INT64, UINT64
            u = c_uint64()
            nv.nvpair_value_uint64(p, byref(u)) if kind == 8 else nv.nvpair_value_int64(p, byref(u))
            return u.value
        if kind == 9:
            s = c_char_p()
            nv.nvpair_value_string(p, byref(s))
            return (s.value or b"").decode("utf-8", "replace")
        if kind == 19 and depth < 8:
            sub = c_void_p()
            nv.nvpair_value_nvlist(p, byref(sub))
            return self.nvlist(sub.value or 0, depth + 1)
        if kind == 20 and depth < 8:
            arr, n = POINTER(c_void_p)(), c_uint32()
            nv.nvpair_value_nvlist_array(p, byref(arr), byref(n))
            return [self.nvlist(arr[i] or 0, depth + 1) for i in range(n.value)]
        if kind in (1, 21):  # BOOLEAN (presence), BOOLEAN_VALUE
            b = c_int(1)
            if kind == 21:
                nv.nvpair_value_boolean_value(p, byref(b))
            return bool(b.value)
        if kind in (5, 6):
            i = c_uint32()
            nv.nvpair_value_uint32(p, byref(i))
            return i.value
        return None  # arrays of numbers (vdev statistics...): not needed

    # ------------------------------------------------------------------ pools
    def find(self, paths: list[str]) -> list[dict[str, Any]]:
        """The pools on ``paths`` (their configs as the labels give them), active or not."""
        arr = (c_char_p * len(paths))(*(p.encode() for p in paths))
        args = ImportArgs(path=arr, paths=len(paths), can_be_active=1, scan=1)
        ops = c_void_p.in_dll(self.z, "libzpool_config_ops")
        hdl = LibpcHandle(lpc_ops=ctypes.addressof(ops))
        found = self.z.zpool_search_import(byref(hdl), byref(args))
        if not found:
            return []
        self.configs = found
        return list(self.nvlist(found).values())

    def import_pool(self, guid: int, name: str) -> dict[str, Any]:
        pools = self.nv
        pair = pools.nvlist_next_nvpair(self.configs, None)
        while pair:
            sub = c_void_p()
            pools.nvpair_value_nvlist(c_void_p(pair), byref(sub))
            config = self.nvlist(sub.value or 0)
            if config.get("pool_guid") == guid:
                err = self.z.spa_import(name.encode(), sub, None, ZFS_IMPORT_SKIP_MMP)
                if err:
                    raise Failed(err, f"spa_import failed: {os.strerror(err)}")
                self.pool = name
                return {"name": name, "guid": guid}
            pair = pools.nvlist_next_nvpair(self.configs, c_void_p(pair))
        raise Failed(2, f"no pool with guid {guid} was found")

    # ------------------------------------------------------------------ datasets
    def datasets(self, under: str) -> list[dict[str, Any]]:
        names: list[str] = []

        def found(name: bytes, _arg: int) -> int:
            names.append(name.decode("utf-8", "replace"))
            return 0

        seen = ctypes.CFUNCTYPE(c_int, c_char_p, c_void_p)(found)

        err = self.z.dmu_objset_find(under.encode(), seen, None, DS_FIND_CHILDREN | DS_FIND_SNAPSHOTS)
        if err:
            raise Failed(err, f"{under}: {os.strerror(err)}")
        return [self._stats(n) for n in sorted(names) if "$" not in n and "%" not in n]

    def _stats(self, name: str) -> dict[str, Any]:
        os_ = c_void_p()
        err = self.z.dmu_objset_hold(name.encode(), self._tag, byref(os_))
        if err:
            raise Failed(err, f"{name}: {os.strerror(err)}")
        try:
            nvl = c_void_p()
            err = self.z.dsl_prop_get_all(os_, byref(nvl))
            if err:
                raise Failed(err, f"{name}: properties: {os.strerror(err)}")
            self.z.dmu_objset_stats(os_, nvl)
            props = self.nvlist(nvl.value or 0)
            self.nv.nvlist_free(nvl)
            kind = self.z.dmu_objset_type(os_)
        finally:
            self.z.dmu_objset_rele(os_, self._tag)
        return {"name": name, "objset_type": kind, "props": props}

    def objset(self, name: str) -> Objset:
        """The objset of filesystem or snapshot ``name``, held for the session, its SA set up."""
        if name in self.objsets:
            return self.objsets[name]
        os_ = c_void_p()
        # decrypt: an encrypted dataset reads through the key loaded by load_key (EACCES
        # without it); an unencrypted one ignores the flag
        err = self.z.dmu_objset_hold_flags(name.encode(), 1, self._tag, byref(os_))
        if err:
            raise Failed(err, f"{name}: {os.strerror(err)}")
        self.z.dsl_dataset_long_hold(c_void_p(self.z.dmu_objset_ds(os_)), self._tag)
        self.z.dsl_pool_rele(c_void_p(self.z.dmu_objset_pool(os_)), self._tag)
        if self.z.dmu_objset_type(os_) != DMU_OST_ZFS:
            raise Failed(22, f"{name} is not a filesystem")
        version, sa_obj = c_uint64(), c_uint64()
        self._zap(os_, MASTER_NODE_OBJ, b"VERSION", version)
        if version.value >= 5:  # ZPL_VERSION_SA
            self._zap(os_, MASTER_NODE_OBJ, b"SA_ATTRS", sa_obj)
        table = POINTER(c_uint16)()
        table_reg = c_void_p.in_dll(self.z, "zfs_attr_table")
        err = self.z.sa_setup(os_, sa_obj, byref(table_reg), ZPL_END, byref(table))
        if err:
            raise Failed(err, f"{name}: sa_setup: {os.strerror(err)}")
        self.objsets[name] = Objset(os_.value or 0, table)
        return self.objsets[name]

    def _zap(self, os_: Any, obj: int, key: bytes, out: c_uint64) -> None:
        err = self.z.zap_lookup(os_, obj, key, 8, 1, byref(out))
        if err:
            raise Failed(err, f"object {obj}: {key.decode()}: {os.strerror(err)}")

    def root(self, name: str) -> int:
        out = c_uint64()
        self._zap(self.objset(name).handle, MASTER_NODE_OBJ, b"ROOT", out)
        return out.value

    def resolve(self, name: str, path: str) -> dict[str, Any]:
        """The stat of ``path`` from the root, never following a link: ``depth`` is how many
        components were resolved; it stops at a component that is not a directory
        (``blocked``: the stat is that component's) or does not exist (``missing``: the
        stat is its directory's). Directories on the way are remembered for the session."""
        handle = self.objset(name).handle
        parts = [p for p in path.split("/") if p]
        depth, obj = 0, None
        for n in range(len(parts), 0, -1):  # the deepest directory already known
            obj = self.dirs.get((name, "/".join(parts[:n])))
            if obj is not None:
                depth = n
                break
        if obj is None:
            obj = self.root(name)
        st = self.stat(name, obj)
        for part in parts[depth:]:
            if (st["mode"] & S_IFMT) != S_IFDIR:
                return {"stat": st, "depth": depth, "missing": False, "blocked": True}
            de = c_uint64()
            err = self.z.zap_lookup(handle, obj, part.encode("utf-8", "surrogateescape"), 8, 1, byref(de))
            if err == 2:
                return {"stat": st, "depth": depth, "missing": True, "blocked": False}
            if err:
                raise Failed(err, f"{path}: {os.strerror(err)}")
            obj = de.value & ((1 << 48) - 1)
            st = self.stat(name, obj)
            depth += 1
            if (st["mode"] & S_IFMT) == S_IFDIR:
                if len(self.dirs) >= MAX_REMEMBERED:
                    self.dirs.clear()
                self.dirs[(name, "/".join(parts[:depth]))] = obj
        return {"stat": st, "depth": depth, "missing": False, "blocked": False}

    def fetch(self, name: str, path: str, limit: int) -> dict[str, Any]:
        """``resolve``, and a regular file of at most ``limit`` bytes read into the window
        by the same request (``fetched``: how many bytes)."""
        found = self.resolve(name, path)
        st = found["stat"]
        if not (found["missing"] or found["blocked"]) and (st["mode"] & S_IFMT) == S_IFREG and st["size"] <= limit:
            found["fetched"] = self.read(name, st["obj"], 0, st["size"])
        return found

    def entries(self, name: str, obj: int) -> list[tuple[str, int]]:
        handle = self.objset(name).handle
        cursor = ctypes.create_string_buffer(256)  # zap_cursor_t is 56 bytes
        attr = self.z.zap_attribute_alloc()
        out = []
        self.z.zap_cursor_init(cursor, handle, obj)
        try:
            while self.z.zap_cursor_retrieve(cursor, c_void_p(attr)) == 0:
                za = ZapAttribute.from_address(attr)
                raw = ctypes.string_at(attr + ctypes.sizeof(ZapAttribute), min(za.za_name_len, MAX_NAME))
                out.append(
                    (raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape"), za.za_first_integer & ((1 << 48) - 1))
                )
                self.z.zap_cursor_advance(cursor)
        finally:
            self.z.zap_cursor_fini(cursor)
            self.z.zap_attribute_free(c_void_p(attr))
        return sorted(out)

    def stat(self, name: str, obj: int) -> dict[str, Any]:
        objset = self.objset(name)
        table, values = objset.table, objset.values
        hdl = c_void_p()
        err = self.z.sa_handle_get(objset.handle, obj, None, SA_HDL_PRIVATE, byref(hdl))
        if err:
            raise Failed(err, f"object {obj}: {os.strerror(err)}")
        try:
            err = self.z.sa_bulk_lookup(hdl, objset.bulk, len(objset.bulk))
            if err:
                raise Failed(err, f"object {obj}: its attributes: {os.strerror(err)}")
            mode, size, uid, gid, links, parent, *times = values
            out: dict[str, Any] = {
                "obj": obj, "mode": mode, "size": size, "uid": uid, "gid": gid, "links": links, "parent": parent,
                "atime": times[0:2], "mtime": times[2:4], "ctime": times[4:6],
            }  # fmt: skip
            directory = c_uint64()
            err = self.z.sa_lookup(hdl, table[ZPL["xattr"]], byref(directory), 8)
            out["xattr"] = None if err else directory.value
            link = self._variable(hdl, table[ZPL["symlink"]], obj, "symlink") if mode & S_IFMT == S_IFLNK else None
            out["symlink"] = None if link is None else link.hex()
            packed = self._variable(hdl, table[ZPL["dxattr"]], obj, "dxattr")
        finally:
            self.z.sa_handle_destroy(hdl)
        out["xattrs"] = self.xattrs(name, obj, out["xattr"], packed) if out["xattr"] or packed else []
        return out

    def _variable(self, hdl: Any, attr: int, obj: int, what: str) -> bytes | None:
        size = c_int()
        if self.z.sa_size(hdl, attr, byref(size)) != 0:
            return None
        buf = ctypes.create_string_buffer(max(size.value, 1))
        err = self.z.sa_lookup(hdl, attr, buf, size.value)
        if err:
            raise Failed(err, f"object {obj}: {what}: {os.strerror(err)}")
        return buf.raw[: size.value]

    def load_key(self, root: str, key: bytes) -> dict[str, Any]:
        """Load the wrapping key of encryption root ``root`` (as zdb -K does); a wrong key
        is EACCES, at once."""
        z, nv = self.z, self.nv
        params = c_void_p(nv.fnvlist_alloc())
        dcp = c_void_p()
        try:
            data = (ctypes.c_uint8 * len(key)).from_buffer_copy(key)
            nv.fnvlist_add_uint8_array(params, b"wkeydata", data, len(key))
            err = z.dsl_crypto_params_create_nvlist(DCP_CMD_NONE, None, params, byref(dcp))
            if err:
                raise Failed(err, f"{root}: the key is not usable: {os.strerror(err)}")
            err = z.spa_keystore_load_wkey(root.encode(), dcp, 0)
            z.dsl_crypto_params_free(dcp, 1 if err else 0)  # once loaded, the keystore owns it
        finally:
            nv.fnvlist_free(params)
        if err in (EACCES, ECKSUM):
            raise Failed(EACCES, f"{root}: wrong key")
        if err and err != EEXIST:  # EEXIST: loaded already
            raise Failed(err, f"{root}: the key could not be loaded: {os.strerror(err)}")
        return {"root": root}

    # ------------------------------------------------------------------ xattrs
    def xattrs(self, name: str, obj: int, directory: int | None, packed: bytes | None) -> list[list[Any]]:
        """[[name as stored, value in hex or None if too large]...]: those of the file's
        hidden xattr directory (``xattr=dir``), then those in its SA (``xattr=sa``),
        which win on a name held by both, as the ZPL reads them."""
        found: dict[str, str | None] = {}
        if directory:
            for child, child_obj in self.entries(name, directory)[:MAX_XATTRS]:
                found[child] = self._xattr_value(name, child_obj)
        if packed:
            found.update(self._sa_xattrs(obj, packed))
        out, total = [], 0
        # In the order the parent takes them: by Linux name (a name stored without a
        # namespace is the user's), so what is left out here is what it leaves out.
        ordered = sorted(found.items(), key=lambda item: linux_name(item[0]))
        for key, value in ordered[:MAX_XATTRS]:
            # Values the parent never shows (other namespaces; past its bound) go as None,
            # which keeps a stat line far below the parent's longest.
            if value is not None and (key.startswith(OTHER_NAMESPACES) or total + len(value) // 2 > MAX_XATTR_TOTAL):
                value = None
            total += len(value or "") // 2
            out.append([key, value])
        return out

    def _xattr_value(self, name: str, obj: int) -> str | None:
        """The contents of an xattr directory's file, hex; None past MAX_XATTR_VALUE."""
        size = self.stat_size(name, obj)
        if size > MAX_XATTR_VALUE:
            return None
        buf = ctypes.create_string_buffer(max(size, 1))
        err = self.z.dmu_read(self.objset(name).handle, obj, 0, size, buf, 0)
        if err:
            raise Failed(err, f"xattr object {obj}: {os.strerror(err)}")
        return buf.raw[:size].hex()

    def stat_size(self, name: str, obj: int) -> int:
        objset = self.objset(name)
        hdl, size = c_void_p(), c_uint64()
        err = self.z.sa_handle_get(objset.handle, obj, None, SA_HDL_PRIVATE, byref(hdl))
        if err:
            raise Failed(err, f"object {obj}: {os.strerror(err)}")
        try:
            err = self.z.sa_lookup(hdl, objset.table[ZPL["size"]], byref(size), 8)
        finally:
            self.z.sa_handle_destroy(hdl)
        if err:
            raise Failed(err, f"object {obj}: size: {os.strerror(err)}")
        return size.value

    def _sa_xattrs(self, obj: int, packed: bytes) -> dict[str, str | None]:
        """The SA xattrs: an XDR-packed nvlist of byte arrays, unpacked by libnvpair."""
        nvl = c_void_p()
        err = self.nv.nvlist_unpack(packed, len(packed), byref(nvl), 0)
        if err:
            raise Failed(err, f"object {obj}: its SA xattrs do not unpack: {os.strerror(err)}")
        out: dict[str, str | None] = {}
        try:
            pair = self.nv.nvlist_next_nvpair(nvl, None)
            while pair and len(out) < MAX_XATTRS:
                key = self.nv.nvpair_name(c_void_p(pair)).decode("utf-8", "surrogateescape")
                if self.nv.nvpair_type(c_void_p(pair)) == DATA_TYPE_BYTE_ARRAY:
                    data, n = POINTER(ctypes.c_ubyte)(), c_uint32()
                    self.nv.nvpair_value_byte_array(c_void_p(pair), byref(data), byref(n))
                    out[key] = ctypes.string_at(data, n.value).hex() if n.value <= MAX_XATTR_VALUE else None
                pair = self.nv.nvlist_next_nvpair(nvl, c_void_p(pair))
        finally:
            self.nv.nvlist_free(nvl)
        return out

    def map_window(self, fd: int, size: int) -> int:
        """Map the parent's shared memory file: where ``read`` puts file bytes."""
        self._window_map = mmap.mmap(fd, size)
        self.window = (ctypes.c_char * size).from_buffer(self._window_map)
        return size

    def read(self, name: str, obj: int, offset: int, length: int) -> int:
        """Bytes [offset, offset+length) of object ``obj`` into the window, in CHUNK reads."""
        if self.window is None or length > len(self.window):
            raise Failed(22, f"a read of {length} bytes does not fit the window")
        handle, base = self.objset(name).handle, ctypes.addressof(self.window)
        done = 0
        while done < length:
            n = min(CHUNK, length - done)
            err = self.z.dmu_read(handle, obj, offset + done, n, base + done, 0)
            if err:
                raise Failed(err, f"object {obj} at offset {offset + done}: {os.strerror(err)}")
            done += n
        return done


def serve(zpool: Zpool, requests: Any, out: Any) -> None:
    handlers: dict[str, Any] = {
        "find": lambda r: zpool.find(list(r["paths"])),
        "import": lambda r: zpool.import_pool(int(r["guid"]), str(r["name"])),
        "datasets": lambda r: zpool.datasets(str(r["under"])),
        "resolve": lambda r: (
            zpool.fetch(str(r["dataset"]), str(r["path"]), int(r["fetch"]))
            if "fetch" in r
            else zpool.resolve(str(r["dataset"]), str(r["path"]))
        ),
        "entries": lambda r: zpool.entries(str(r["dataset"]), int(r["obj"])),
        "stat": lambda r: zpool.stat(str(r["dataset"]), int(r["obj"])),
        "walk": lambda r: walk(zpool, str(r["dataset"]), int(r["obj"]), out),
        "load_key": lambda r: zpool.load_key(str(r["root"]), bytes.fromhex(str(r["key"]))),
        "window": lambda r: zpool.map_window(int(r["fd"]), int(r["size"])),
        "read": lambda r: zpool.read(str(r["dataset"]), int(r["obj"]), int(r["offset"]), int(r["length"])),
    }
    for line in requests:
        request = json.loads(line)
        op = request.get("op")
        try:
            if op not in handlers:
                raise Failed(22, f"unknown request {op!r}")
            result = handlers[op](request)
            reply: dict[str, Any] = {"ok": True, "result": result}
        except Failed as exc:
            reply = {"ok": False, "errno": exc.errno, "error": str(exc)}
        out.write(json.dumps(reply).encode() + b"\n")
        out.flush()


def walk(zpool: Zpool, name: str, obj: int, out: Any) -> int:
    """Every entry below directory ``obj``, depth first, as ``{"entries": [[path, stat]...]}``
    lines (batched: one JSON line per entry would cost the parent more than the stat)."""
    count = size = 0
    batch: list[bytes] = []

    def flush() -> None:
        nonlocal size
        out.write(b'{"entries": [' + b",".join(batch) + b"]}\n")
        batch.clear()
        size = 0

    stack = [("", obj)]
    while stack:
        prefix, directory = stack.pop()
        for child, child_obj in zpool.entries(name, directory):
            st = zpool.stat(name, child_obj)
            path = f"{prefix}{child}"
            batch.append(json.dumps([path, st]).encode())
            size += len(batch[-1])
            count += 1
            if len(batch) >= BATCH_ENTRIES or size >= BATCH_BYTES:
                flush()
            if (st["mode"] & S_IFMT) == S_IFDIR:
                stack.append((path + "/", child_obj))
    if batch:
        flush()
    return count


def main(argv: list[str]) -> None:
    # The protocol gets stdout's descriptor; stdout itself becomes stderr, so that
    # whatever libzpool prints can never be taken for a reply.
    proto = os.fdopen(os.dup(1), "wb", buffering=1 << 16)
    os.dup2(2, 1)
    zpool = Zpool(argv[1], argv[2])
    proto.write(json.dumps({"hello": PROTOCOL, "pid": os.getpid()}).encode() + b"\n")
    proto.flush()
    serve(zpool, sys.stdin.buffer, proto)
    proto.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv)
