"""Real ZFS for any project's tests: the ``dsgtest`` pool, in a qemu VM where ZFS is missing.

``dsg-storage-testpool run -- CMD...`` (or ``python -m dsg_storage.testpool run ...``) from
the root of a checkout; see ``cli`` for the commands, ``vm`` for the image and the boot,
``pool`` for the pool, ``hosttools`` for the host's qemu/debootstrap/mkfs.ext4 and
``deps`` for bringing a project's Python dependencies into the guest.

Standard library only, and independent of the rest of dsg_storage, so that it runs on a
fresh machine before anything is installed.
"""
