"""The ZFS boundary: the only code that imports ``libzfs_core`` or runs ``zfs``/``zpool``."""
