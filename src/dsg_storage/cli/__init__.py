"""The ``dsg-storage`` command line (``main``) and its demo."""

from .main import main

__all__ = ["main"]
