"""Userland access: exported pools read by OpenZFS's libzpool in a helper process, with
no kernel import, no ZFS module and no root (``open_userland``)."""

from .client import HelperCrashedError, HelperTimeoutError
from .keys import EncryptionKeyError, read_key_file
from .protocol import HelperProtocolError, UserlandError
from .provision import UserlandUnavailableError
from .reader import DamagedFileError, UserlandReader, open_userland

__all__ = [
    "DamagedFileError",
    "EncryptionKeyError",
    "HelperCrashedError",
    "HelperProtocolError",
    "HelperTimeoutError",
    "UserlandError",
    "UserlandReader",
    "UserlandUnavailableError",
    "open_userland",
    "read_key_file",
]
