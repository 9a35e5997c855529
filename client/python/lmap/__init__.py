"""lmap: soft labels from an lmapd server, for PyTorch data loaders.

    import lmap
    with lmap.Client("http://127.0.0.1:8080") as c:
        probs = c.labels(["n01440764_10026"], [[0.1, 0.2, 0.7, 0.9]])  # [1, 1000]

The core (Client, errors) needs only numpy and liblmap (LMAP_LIBRARY, the
copy a wheel carries, or the dynamic loader's). lmap.torch holds the PyTorch helpers:
crop transforms that record the crop box and a Dataset wrapper that fetches
a whole batch's soft labels in one request. See docs/PYTHON.md.
"""

from ._lib import LibraryNotFound
from .client import Client, SparseLabel
from .errors import (BadBoxError, BadIdError, BadRequestError, ClientClosedError, LmapError,
                     NotFoundError, ProtocolError, ServerError, TooLargeError, UnauthorizedError,
                     UnavailableError, UsedAfterForkError)

from ._version import __version__

__all__ = [
    "Client", "SparseLabel", "library_version", "LibraryNotFound", "LmapError", "BadRequestError", "BadBoxError",
    "BadIdError", "NotFoundError", "UnauthorizedError", "TooLargeError", "UnavailableError",
    "ProtocolError", "ServerError", "ClientClosedError", "UsedAfterForkError",
]


def library_version():
    """Version of the loaded liblmap ("MAJOR.MINOR.PATCH")."""
    from . import _lib
    return _lib.text(_lib.load().lmap_version())
