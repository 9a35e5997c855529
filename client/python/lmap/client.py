"""lmap.Client: the Python face of liblmap (ctypes, no compile step).

A Client owns one C handle (`lmap_client *`), which keeps its HTTP
connections alive between calls and fails over between the endpoints it was
given. Batches go out as one request each; dense answers are streamed by the
C library straight into a numpy buffer (no Python-level parsing, no copy).

Invariants:
- The handle is used only by the process that created it (os.getpid() is
  recorded): after fork() a Client refuses every call with
  UsedAfterForkError, since parent and child would share its sockets.
  Closing it in the child only forgets the handle (see close()).
- One call at a time per Client: liblmap handles have no lock and ctypes
  releases the GIL during a call, so a per-Client lock serialises threads
  that share a Client (use one Client per thread to run them in parallel).
- The store's shape (classes C, K, H, W) is fetched once with the first
  call that needs it and cached; if the server's store changes shape
  (SIGHUP to a different store) the answer's size check fails, the cache is
  refreshed and the call retried once (not with a caller's `out=` buffer).
"""

import ctypes
import json
import os
import threading
from typing import NamedTuple, Sequence, Union

import numpy as np

from . import _lib
from .errors import LmapError, error_class


class SparseLabel(NamedTuple):
    """Sparse soft label of one output cell.

    classes: int32 array, the classes with a non-zero pooled logit, by
             decreasing value (ties by class index);
    values:  float32 array, their probabilities (logits with softmax=False);
    rest:    float, the value of every class not listed (0 with softmax=False).
    """

    classes: np.ndarray
    values: np.ndarray
    rest: float

    def to_dense(self, num_classes):
        """The same label as a dense float32 [num_classes] vector."""
        d = np.full(num_classes, self.rest, dtype=np.float32)
        d[self.classes] = self.values
        return d


def _as_bytes(s, what):
    if isinstance(s, bytes):
        return s
    if isinstance(s, str):
        return s.encode("utf-8")
    raise TypeError("%s must be str, not %s" % (what, type(s).__name__))


def _read_token(lib, path):
    """The token of a --token-file, by liblmap's one rule (lmap_token_read)."""
    buf = ctypes.create_string_buffer(_lib.TOKEN_MAX + 1)
    why = ctypes.create_string_buffer(_lib.ERRBUF_SIZE + 4096)
    rc = lib.lmap_token_read(os.fsencode(path), buf, None, why, len(why))
    if rc != 0:
        msg = why.value.decode("utf-8", "replace")
        raise OSError(msg) if _lib.text(lib.lmap_err_code(rc)) == "io_error" else ValueError(msg)
    return buf.value


class Client:
    """A connection to one or more lmapd servers serving the same store.

    urls: "http://host:port" or several, as a comma-separated string or a
          list; a failed endpoint is skipped and the request sent whole to
          the next (see include/lmap/client.h).
    token / token_file: bearer token, or a file whose first line is it,
          read by liblmap's lmap_token_read as lmapd and `lmap query` read
          it (trailing white space dropped; an empty line, a NUL byte or
          more than 4,095 bytes raise ValueError, an unreadable file
          OSError, each naming the file).
    connect_timeout, timeout: seconds, per TCP connect / per whole request.
    retries: extra passes over all endpoints once every one failed (0: none).
    retry_backoff: seconds slept before each extra pass (doubled each time).
    down_time: seconds a failed endpoint is skipped while others work.
    ca_file: a PEM file of CA certificates to verify https servers against
          (default: the system's).
    json_queries: send label batches as a JSON body instead of lmapd's
          binary queries (the default, read about 100x faster; docs/API.md).
    npy_answers: have dense labels sent as .npy arrays instead of sparse
          binary cells (the default, about 1/30 of the bytes for 1,000
          classes, expanded by liblmap into the same floats bit for bit).
    """

    def __init__(self, urls: Union[str, Sequence[str]], *, token=None, token_file=None,
                 connect_timeout=2.0, timeout=30.0, retries=1, retry_backoff=0.05,
                 down_time=1.0, ca_file=None, json_queries=False, npy_answers=False):
        self._h = None  # set first, so __del__ works whatever fails below
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._shape = None  # cached lmap_info
        if token is not None and token_file is not None:
            raise ValueError("give token or token_file, not both")
        lib = _lib.load()
        if token_file is not None:
            token = _read_token(lib, token_file)
        if token is not None:
            token = _as_bytes(token, "token")
        self._lib = lib
        opts = _lib.ClientOptions()
        lib.lmap_client_options_init(ctypes.byref(opts))
        opts.connect_timeout_ms = _ms(connect_timeout, "connect_timeout")
        opts.timeout_ms = _ms(timeout, "timeout")
        if int(retries) != retries or retries < 0:
            raise ValueError("retries must be an integer >= 0, not %r" % (retries,))
        opts.retries = int(retries) if retries > 0 else -1  # C: 0 means "default"
        opts.retry_backoff_ms = _ms(retry_backoff, "retry_backoff")
        opts.down_ms = _ms(down_time, "down_time")
        opts.token = token
        # https servers are verified against these CAs (a PEM file), or the
        # system's; keep_ca holds the bytes until the handle is made.
        keep_ca = None if ca_file is None else _as_bytes(os.fspath(ca_file), "ca_file")
        opts.ca_file = keep_ca
        opts.json_queries = 1 if json_queries else 0

        if isinstance(urls, (str, bytes)):
            self._urls = _as_bytes(urls, "urls").decode("utf-8")
            url_list = [u.strip() for u in self._urls.split(",")]
        else:
            url_list = [_as_bytes(u, "each url").decode("utf-8") for u in urls]
            self._urls = ",".join(url_list)
        if not url_list or not all(url_list):
            raise ValueError("urls must name at least one server, without empty entries: %r" % (urls,))

        handle = ctypes.c_void_p()
        errbuf = ctypes.create_string_buffer(_lib.ERRBUF_SIZE)
        if isinstance(urls, (str, bytes)):
            rc = lib.lmap_client_new(_as_bytes(urls, "urls"), ctypes.byref(opts),
                                     ctypes.byref(handle), errbuf)
        else:
            arr = (ctypes.c_char_p * len(url_list))(*[u.encode("utf-8") for u in url_list])
            rc = lib.lmap_client_new_array(arr, len(url_list), ctypes.byref(opts),
                                           ctypes.byref(handle), errbuf)
        if rc != 0 or not handle.value:
            code = _lib.text(lib.lmap_err_code(rc))
            msg = errbuf.value.decode("utf-8", "replace") or _lib.text(lib.lmap_strerror(rc))
            raise error_class(code)(msg, code=code, errno=rc, field="urls")
        self._h = handle.value
        if npy_answers:
            lib.lmap_client_set_answer_form(self._h, _lib.ANSWER_NPY)

    # ---------------------------------------------------------- lifecycle --

    def close(self):
        """Frees the C handle (closing its connections). Idempotent.

        In a process other than the creator (a forked child) the handle is
        only forgotten, never freed: its sockets are the parent's too, and
        closing a TLS connection sends a close_notify that would end the
        parent's session. The child leaks that one handle instead."""
        h, self._h = self._h, None
        if h and os.getpid() == self._pid:
            self._lib.lmap_client_free(h)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: ctypes may already be gone
            pass

    def __getstate__(self):
        raise TypeError("an lmap.Client cannot be pickled (its connections belong to one "
                        "process); create one per process, e.g. with lmap.torch.SoftLabelDataset")

    def __repr__(self):
        state = "closed" if self._h is None else ("pid %d" % self._pid)
        return "lmap.Client(%r, %s)" % (self._urls, state)

    @property
    def urls(self):
        """The endpoints, comma-separated, as given."""
        return self._urls

    @property
    def endpoint(self):
        """Base URL of the endpoint that answered the last successful call
        ("" before the first)."""
        with self._lock:
            return _lib.text(self._lib.lmap_client_endpoint(self._handle()))

    # ------------------------------------------------------------- calls --

    def info(self):
        """The server's /v1/info document as a dict (store shape, classes,
        encoding, record count, provenance...). Also refreshes the cached
        shape used to size label buffers."""
        info = _lib.Info()
        js = ctypes.c_void_p()
        with self._lock:
            h = self._handle()
            rc = self._lib.lmap_client_info(h, ctypes.byref(info), ctypes.byref(js))
            if rc != 0:
                raise self._error(h, rc)
        if not js.value:
            raise LmapError("lmap_client_info() succeeded without a document", code="bad_answer",
                            errno=-21)
        try:
            doc = json.loads(ctypes.string_at(js.value).decode("utf-8"))
        finally:
            self._lib.lmap_free(js)
        self._shape = (info.num_classes, info.top_k, info.height, info.width)
        return doc

    @property
    def num_classes(self):
        """C, the number of classes of the store (cached after the first call)."""
        return self._store_shape()[0]

    def labels(self, ids, boxes, output_size=1, flip=None, box_format="xyxy", softmax=True,
               out=None):
        """Dense soft labels of a batch, in one request.

        ids: sequence of N image ids (str); boxes: [N, 4] (numpy, list, or
        torch tensor), read per box_format ("xyxy": x0, y0, x1, y1 fractions;
        "relabel": the official (i/H, j/W, h/H, w/W) tuple); flip: None,
        one bool for all, or N bools; output_size: G.
        Returns float32 numpy [N, C] (G == 1) or [N, C, G, G], probabilities,
        or pooled logits with softmax=False. `out`, when given, is a
        C-contiguous float32 array of that shape to write into (returned).
        """
        # `keep` owns the id bytes that q points into: it lives until we return.
        q, keep, n = self._queries(ids, boxes, flip)
        opts = self._label_options(output_size, box_format, softmax)
        g = opts.output_size
        for attempt in (0, 1):
            c = self._store_shape()[0]
            shape = (n, c) if g == 1 else (n, c, g, g)
            if out is None or attempt:
                buf = np.empty(shape, dtype=np.float32)
            else:
                buf = out
                if not isinstance(buf, np.ndarray) or buf.dtype != np.float32 or \
                        buf.shape != shape or not buf.flags.c_contiguous or not buf.flags.writeable:
                    raise ValueError("out must be a writable C-contiguous float32 array of shape %s"
                                     % (shape,))
            if n == 0:
                return buf
            with self._lock:
                h = self._handle()
                rc = self._lib.lmap_client_labels(h, q.ctypes.data, n, ctypes.byref(opts),
                                                  buf.ctypes.data, buf.size)
                if rc == 0:
                    return buf
                err = self._error(h, rc)
            if attempt == 0 and out is None and self._maybe_stale(rc, err) and self._reshaped():
                continue
            raise err

    def sparse(self, ids, boxes, output_size=1, flip=None, box_format="xyxy", softmax=True):
        """Sparse soft labels of a batch, in one request (same arguments as
        labels()). Returns a list of N results: for G == 1 each is a
        SparseLabel (classes, values, rest); for G > 1 each is a list of G*G
        SparseLabel, the output grid's cells in row-major order."""
        q, keep, n = self._queries(ids, boxes, flip)
        opts = self._label_options(output_size, box_format, softmax)
        if n == 0:
            return []
        res = ctypes.POINTER(_lib.Sparse)()
        with self._lock:
            h = self._handle()
            rc = self._lib.lmap_client_sparse(h, q.ctypes.data, n, ctypes.byref(opts),
                                              ctypes.byref(res))
            if rc != 0:
                raise self._error(h, rc)
        try:
            s = res.contents
            cells = int(s.cells)
            total_cells = int(s.n) * cells
            if int(s.n) != n or cells != opts.output_size ** 2:
                raise LmapError("sparse answer has %d queries of %d cells, expected %d of %d"
                                % (s.n, cells, n, opts.output_size ** 2), code="bad_answer",
                                errno=-21)
            offsets = np.ctypeslib.as_array(s.offsets, shape=(total_cells + 1,)).astype(np.intp)
            m = int(offsets[-1])
            if m:
                classes = np.ctypeslib.as_array(s.classes, shape=(m,)).copy()
                values = np.ctypeslib.as_array(s.values, shape=(m,)).copy()
            else:
                classes = np.empty(0, np.int32)
                values = np.empty(0, np.float32)
            rest = np.ctypeslib.as_array(s.rest, shape=(total_cells,)).tolist()
        finally:
            self._lib.lmap_sparse_free(res)
        items = [SparseLabel(classes[offsets[k]:offsets[k + 1]], values[offsets[k]:offsets[k + 1]],
                             rest[k]) for k in range(total_cells)]
        if cells == 1:
            return items
        return [items[i * cells:(i + 1) * cells] for i in range(n)]

    def map(self, id):
        """The stored map of `id` as the official float32 [2, K, H, W] array
        (plane 0 scores, plane 1 class indices)."""
        bid = _as_bytes(id, "id")
        for attempt in (0, 1):
            _, k, hh, ww = self._store_shape()
            buf = np.empty((2, k, hh, ww), dtype=np.float32)
            shape = (ctypes.c_uint32 * 4)()
            with self._lock:
                h = self._handle()
                rc = self._lib.lmap_client_map(h, bid, buf.ctypes.data, buf.size, shape)
                if rc == 0:
                    return buf
                err = self._error(h, rc)
            if attempt == 0 and self._maybe_stale(rc, err) and self._reshaped():
                continue
            raise err

    # ---------------------------------------------------------- internals --

    def _handle(self):
        if os.getpid() != self._pid:
            raise error_class("used_after_fork")(
                "this lmap.Client was created in process %d and cannot be used in process %d "
                "(its connections would be shared across fork); create a new Client here"
                % (self._pid, os.getpid()), code="used_after_fork", errno=_lib.EINVAL)
        if self._h is None:
            raise error_class("closed")("this lmap.Client is closed", code="closed",
                                        errno=_lib.EINVAL)
        return self._h

    def _error(self, h, rc):
        d = _lib.ErrorDetail()
        self._lib.lmap_client_last_error(h, ctypes.byref(d))
        code = _lib.text(d.server_code) or _lib.text(self._lib.lmap_err_code(rc))
        msg = _lib.text(d.message) or _lib.text(self._lib.lmap_strerror(rc))
        cls = error_class(code, d.http_status)
        return cls(msg, code=code, errno=rc, field=_lib.text(d.field), http_status=d.http_status,
                   endpoint=_lib.text(d.endpoint), request_id=_lib.text(d.request_id))

    def _store_shape(self):
        if self._shape is None:
            self.info()
        return self._shape

    @staticmethod
    def _maybe_stale(rc, err):
        """Could this failure come from a stale cached store shape? ERANGE
        says so (the C library found the store's shape differs from the
        buffer's); an answer that came (HTTP 200) but was refused may too
        (a store replaced between the two calls). A refusal for any other
        reason costs one /v1/info and is raised unchanged."""
        return rc == _lib.ERANGE or err.http_status == 200

    def _reshaped(self):
        """Refreshes the cached store shape; True if it changed."""
        old = self._shape
        self._shape = None
        try:
            self.info()
        except LmapError:
            self._shape = old
            return False
        return self._shape != old

    @staticmethod
    def _label_options(output_size, box_format, softmax):
        if box_format not in _lib.BOX_FORMATS:
            raise ValueError("box_format must be 'xyxy' or 'relabel', not %r" % (box_format,))
        g = int(output_size)
        if g != output_size or g < 1:
            raise ValueError("output_size must be an integer >= 1, not %r" % (output_size,))
        opts = _lib.LabelOptions()
        opts.output_size = g
        opts.box_format = _lib.BOX_FORMATS[box_format]
        opts.softmax = 1 if softmax else 0
        return opts

    @staticmethod
    def _queries(ids, boxes, flip):
        """A numpy array laid out as lmap_query[N], plus the object that owns
        the id bytes it points into (keep it alive during the call), and N."""
        if isinstance(ids, (str, bytes)):
            ids = [ids]  # one id: a batch of one
            boxes = np.asarray(boxes, dtype=np.float64).reshape(1, -1)
        enc = [_as_bytes(s, "each id") for s in ids]
        n = len(enc)
        b = np.asarray(boxes, dtype=np.float64)
        if b.shape != (n, 4) and not (n == 0 and b.size == 0):
            raise ValueError("boxes must have shape [%d, 4] for %d ids, not %s"
                             % (n, n, list(b.shape)))
        q = np.zeros(n, dtype=_lib.query_dtype())
        if n == 0:
            return q, None, 0
        blob = b"\0".join(enc) + b"\0"
        if blob.count(b"\0") != n:
            raise ValueError("an id contains a NUL character")
        ids_buf = np.frombuffer(blob, dtype=np.uint8)
        lens = np.fromiter((len(e) + 1 for e in enc), dtype=np.intp, count=n)
        starts = np.zeros(n, dtype=np.intp)
        np.cumsum(lens[:-1], out=starts[1:])
        q["id"] = ids_buf.ctypes.data + starts
        q["box"] = b
        if flip is None:
            pass
        elif isinstance(flip, (bool, np.bool_)):
            q["flip"] = int(flip)
        else:
            f = np.asarray(flip)
            if f.shape != (n,):
                raise ValueError("flip must be None, a bool, or %d bools; got shape %s"
                                 % (n, list(f.shape)))
            q["flip"] = f.astype(bool)
        return q, (blob, ids_buf), n


def _ms(seconds, what):
    ms = int(round(float(seconds) * 1000.0))
    if ms <= 0:
        raise ValueError("%s must be > 0 seconds, not %r" % (what, seconds))
    return ms
