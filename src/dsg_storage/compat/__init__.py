"""Drop-in replacements for the ZFS layers of tools dsg-storage grew out of.

``dsg_storage.compat.dsg.ZFSOperations``: HRDAG/dsg's interface, on ``Repository``.
"""
