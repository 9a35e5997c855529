"""ctypes declarations of liblmap (include/lmap/client.h, include/lmap/error.h).

This module finds and loads the shared library on first use and declares the
argument and result types of every function it binds, so that ctypes never
guesses (a guessed `int` result would truncate pointers on 64-bit systems).
The structures mirror the C header field for field; `query_dtype()` gives a
numpy structured dtype laid out exactly like `lmap_query`, so a whole batch of
queries is filled with vectorised numpy assignments instead of a Python loop
over ctypes structures.

Lookup order: the environment variable LMAP_LIBRARY (a path, and then no
other), then the copy a wheel carries (lmap/_libs/liblmap.so.*), then
ctypes.util.find_library("lmap"), then the soname "liblmap.so.1" through the
dynamic loader's search path (LD_LIBRARY_PATH, ld.so.cache).

Invariant: the library is loaded at most once per process and only when a
Client is created (importing the package never needs it).
"""

import ctypes
import ctypes.util
import glob
import os
import threading

import numpy as np

from ._version import __version__

_BUNDLED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_libs")

# Error codes of include/lmap/error.h, the few the binding itself needs.
EINVAL = -1
ENOMEM = -2
ERANGE = -13

BOX_FORMATS = {"xyxy": 0, "relabel": 1}

ERRBUF_SIZE = 256  # LMAP_ERRBUF_SIZE
TOKEN_MAX = 4095  # LMAP_TOKEN_MAX
MAX_ENDPOINTS = 16  # LMAP_MAX_ENDPOINTS


class ClientOptions(ctypes.Structure):
    _fields_ = [
        ("connect_timeout_ms", ctypes.c_long),
        ("timeout_ms", ctypes.c_long),
        ("retries", ctypes.c_int),
        ("retry_backoff_ms", ctypes.c_long),
        ("down_ms", ctypes.c_long),
        ("token", ctypes.c_char_p),
        ("ca_file", ctypes.c_char_p),
        ("json_queries", ctypes.c_int),
    ]


class Query(ctypes.Structure):
    _fields_ = [
        ("id", ctypes.c_char_p),
        ("box", ctypes.c_double * 4),
        ("flip", ctypes.c_int),
    ]


class LabelOptions(ctypes.Structure):
    _fields_ = [
        ("output_size", ctypes.c_int),
        ("box_format", ctypes.c_int),  # enum lmap_box_format
        ("softmax", ctypes.c_int),
    ]


class Sparse(ctypes.Structure):
    _fields_ = [
        ("n", ctypes.c_size_t),
        ("cells", ctypes.c_size_t),
        ("offsets", ctypes.POINTER(ctypes.c_size_t)),
        ("classes", ctypes.POINTER(ctypes.c_int32)),
        ("values", ctypes.POINTER(ctypes.c_float)),
        ("rest", ctypes.POINTER(ctypes.c_float)),
    ]


class Info(ctypes.Structure):
    _fields_ = [
        ("num_classes", ctypes.c_uint32),
        ("top_k", ctypes.c_uint32),
        ("height", ctypes.c_uint32),
        ("width", ctypes.c_uint32),
        ("records", ctypes.c_uint64),
    ]


class ErrorDetail(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_int),
        ("http_status", ctypes.c_int),
        ("server_code", ctypes.c_char_p),
        ("message", ctypes.c_char_p),
        ("field", ctypes.c_char_p),
        ("endpoint", ctypes.c_char_p),
        ("request_id", ctypes.c_char_p),
    ]


_VOIDP = ctypes.c_void_p
_SIZE = ctypes.c_size_t
_CHARP = ctypes.c_char_p

# name: (restype, argtypes). Opaque handles and buffers filled from numpy are
# passed as c_void_p (an address); everything else has its exact type.
_PROTOTYPES = {
    "lmap_client_options_init": (None, [ctypes.POINTER(ClientOptions)]),
    "lmap_token_read": (ctypes.c_int, [_CHARP, _VOIDP, ctypes.POINTER(_SIZE), _VOIDP, _SIZE]),
    "lmap_client_new": (ctypes.c_int, [_CHARP, ctypes.POINTER(ClientOptions),
                                       ctypes.POINTER(_VOIDP), ctypes.POINTER(ctypes.c_char)]),
    "lmap_client_new_array": (ctypes.c_int, [ctypes.POINTER(_CHARP), _SIZE,
                                             ctypes.POINTER(ClientOptions),
                                             ctypes.POINTER(_VOIDP), ctypes.POINTER(ctypes.c_char)]),
    "lmap_client_free": (None, [_VOIDP]),
    "lmap_client_set_answer_form": (ctypes.c_int, [_VOIDP, ctypes.c_int]),
    "lmap_label_options_init": (None, [ctypes.POINTER(LabelOptions)]),
    "lmap_client_labels": (ctypes.c_int, [_VOIDP, _VOIDP, _SIZE, ctypes.POINTER(LabelOptions),
                                          _VOIDP, _SIZE]),
    "lmap_client_sparse": (ctypes.c_int, [_VOIDP, _VOIDP, _SIZE, ctypes.POINTER(LabelOptions),
                                          ctypes.POINTER(ctypes.POINTER(Sparse))]),
    "lmap_sparse_free": (None, [ctypes.POINTER(Sparse)]),
    "lmap_client_map": (ctypes.c_int, [_VOIDP, _CHARP, _VOIDP, _SIZE,
                                       ctypes.POINTER(ctypes.c_uint32)]),
    "lmap_client_info": (ctypes.c_int, [_VOIDP, ctypes.POINTER(Info), ctypes.POINTER(_VOIDP)]),
    "lmap_client_last_error": (None, [_VOIDP, ctypes.POINTER(ErrorDetail)]),
    "lmap_client_errmsg": (_CHARP, [_VOIDP]),
    "lmap_client_endpoint": (_CHARP, [_VOIDP]),
    "lmap_free": (None, [_VOIDP]),
    "lmap_version": (_CHARP, []),
    "lmap_strerror": (_CHARP, [ctypes.c_int]),
    "lmap_err_code": (_CHARP, [ctypes.c_int]),
    "lmap_err_from_code": (ctypes.c_int, [_CHARP]),
    "lmap_err_http_status": (ctypes.c_int, [ctypes.c_int]),
}

# lmap_answer_form (include/lmap/client.h)
ANSWER_SPARSE = 0
ANSWER_NPY = 1

_lock = threading.Lock()
_lib = None
_query_dtype = None


class LibraryNotFound(OSError):
    """liblmap could not be loaded; the message says where it looked."""


def _candidates():
    env = os.environ.get("LMAP_LIBRARY")
    if env:
        # An explicit path is a promise: do not fall back to another copy.
        return [env], True
    # A wheel's own copy, built with the package (setup.py).
    names = sorted(glob.glob(os.path.join(_BUNDLED, "liblmap.so.*")))[:1]
    found = ctypes.util.find_library("lmap")
    names += [found] if found else []
    names.append("liblmap.so.1")
    return names, False


def load():
    """The loaded and declared liblmap (a ctypes.CDLL); raises
    LibraryNotFound naming every place tried."""
    global _lib
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is not None:
            return _lib
        names, explicit = _candidates()
        errors = []
        for name in names:
            try:
                lib = ctypes.CDLL(name)
            except OSError as e:
                errors.append("%s: %s" % (name, e))
                continue
            missing = [f for f in _PROTOTYPES if not hasattr(lib, f)]
            if missing:
                errors.append("%s: missing symbols %s" % (name, ", ".join(missing)))
                continue
            for fname, (restype, argtypes) in _PROTOTYPES.items():
                fn = getattr(lib, fname)
                fn.restype = restype
                fn.argtypes = argtypes
            # The structures above are this version's: another minor
            # version's library may lay them out otherwise.
            have = text(lib.lmap_version())
            if have.split(".")[:2] != __version__.split(".")[:2]:
                errors.append("%s: liblmap %s, but this package is %s (the structures differ)"
                              % (name, have, __version__))
                continue
            _lib = lib
            return lib
        hint = ("LMAP_LIBRARY=%s could not be loaded" % names[0]) if explicit else \
            "set LMAP_LIBRARY to the path of liblmap.so (e.g. build/client/liblmap.so.1)"
        raise LibraryNotFound("liblmap not found (%s); tried: %s" % (hint, "; ".join(errors)))


def query_dtype():
    """numpy structured dtype with the exact layout of `lmap_query`: the id as
    an address (uintp), the box as 4 float64, flip as int32, same offsets and
    item size as the C compiler's."""
    global _query_dtype
    if _query_dtype is None:
        _query_dtype = np.dtype({
            "names": ["id", "box", "flip"],
            "formats": [np.uintp, (np.float64, 4), np.int32],
            "offsets": [Query.id.offset, Query.box.offset, Query.flip.offset],
            "itemsize": ctypes.sizeof(Query),
        })
    return _query_dtype


def text(p):
    """A C string (bytes or None) as str."""
    return p.decode("utf-8", "replace") if p else ""
