"""Exceptions of the lmap binding.

Every failure of a liblmap call becomes an LmapError carrying what the C
library reports in `lmap_error_detail`: the server's JSON error code
(`code`, e.g. "not_found"), the library's negative error number (`errno`,
from include/lmap/error.h), the message, the request field at fault, the
HTTP status of the last answer (0 when no answer came), the endpoint tried
last and the answer's X-Request-Id. The subclass is chosen from `code`, so a
caller can catch NotFoundError without parsing strings; anything unexpected
is still an LmapError.

Two errors are the binding's own, raised before any C call: ClientClosedError
(a closed Client) and UsedAfterForkError (a Client used in a process other
than the one that created it; its C handle must never cross fork()). Their
`code` is "closed" / "used_after_fork", not a server code; `errno` is -1
(LMAP_EINVAL).

Wrong Python arguments (a boxes array of the wrong shape, an unknown
box_format, ...) raise the usual TypeError / ValueError.
"""


class LmapError(Exception):
    """A failed lmap call. Attributes: code (str), errno (negative int),
    message (str), field (str, "" when none), http_status (int, 0 when no
    answer came), endpoint (str), request_id (str).

    Each class has defaults for code, errno and http_status, so an error
    rebuilt from its class and message alone (as torch's DataLoader does
    when it re-raises a worker's exception in the main process) still has
    the right code; the worker's full details are then in the message."""

    _defaults = ("unknown", -14, 0)  # code, errno, http_status

    def __init__(self, message, code=None, errno=None, field="", http_status=None,
                 endpoint="", request_id=""):
        self.message = message
        self.code = code if code is not None else self._defaults[0]
        self.errno = errno if errno is not None else self._defaults[1]
        self.field = field or ""
        self.http_status = http_status if http_status is not None else self._defaults[2]
        self.endpoint = endpoint or ""
        self.request_id = request_id or ""
        super().__init__(message)

    def __str__(self):
        parts = [self.message]
        extra = []
        if self.code:
            extra.append(self.code)
        if self.http_status:
            extra.append("HTTP %d" % self.http_status)
        if self.field:
            extra.append("field %s" % self.field)
        if self.endpoint:
            extra.append(self.endpoint)
        if self.request_id:
            extra.append("request %s" % self.request_id)
        if extra:
            parts.append("(%s)" % ", ".join(extra))
        return " ".join(parts)

    def __reduce__(self):
        # Picklable with every attribute: a DataLoader worker sends its
        # exceptions to the main process.
        return (_rebuild, (type(self), self.message, self.code, self.errno, self.field,
                           self.http_status, self.endpoint, self.request_id))


def _rebuild(cls, message, code, errno, field, http_status, endpoint, request_id):
    return cls(message, code=code, errno=errno, field=field, http_status=http_status,
               endpoint=endpoint, request_id=request_id)


class BadRequestError(LmapError):
    """The request was refused as malformed (HTTP 400): invalid_argument,
    bad_format, bad_request, out_of_range; see the subclasses for boxes and ids."""

    _defaults = ("invalid_argument", -1, 400)


class BadBoxError(BadRequestError):
    """code "bad_box": a box outside [0, 1], inverted, or not finite."""

    _defaults = ("bad_box", -11, 400)


class BadIdError(BadRequestError):
    """code "bad_id": an id that is not a valid lmap id."""

    _defaults = ("bad_id", -12, 400)


class NotFoundError(LmapError):
    """code "not_found": an id the store does not hold (the message names it)."""

    _defaults = ("not_found", -3, 404)


class UnauthorizedError(LmapError):
    """code "unauthorized": missing or wrong bearer token (HTTP 401)."""

    _defaults = ("unauthorized", -15, 401)


class TooLargeError(LmapError):
    """code "too_large": more queries than the server's --max-batch, or a
    body over --max-body (HTTP 413)."""

    _defaults = ("too_large", -9, 413)


class UnavailableError(LmapError):
    """No endpoint could answer: connection refused or reset, 503 (code
    "unavailable"), or a timeout (code "timeout")."""

    _defaults = ("unavailable", -19, 0)


class ProtocolError(LmapError):
    """code "bad_answer": an answer that is not what was asked for: not
    lmapd's, of another shape (e.g. the store changed its number of classes
    between calls), holding a value that cannot be a label (NaN, infinite, a
    probability outside [0, 1], a class index the store does not have), or
    larger than such an answer can be. The message names the item and the
    value; nothing of the answer reaches the caller's arrays."""

    _defaults = ("bad_answer", -21, 0)


class ServerError(LmapError):
    """Any other server-side failure (HTTP 5xx: internal, corrupt, bad_store...)."""

    _defaults = ("internal", -14, 500)


class ClientClosedError(LmapError):
    """The Client was closed."""

    _defaults = ("closed", -1, 0)


class UsedAfterForkError(LmapError):
    """The Client was created in another process. Create a new Client in
    this process (lmap.torch.SoftLabelDataset does so per worker)."""

    _defaults = ("used_after_fork", -1, 0)


_BY_CODE = {
    "bad_box": BadBoxError,
    "bad_id": BadIdError,
    "invalid_argument": BadRequestError,
    "bad_format": BadRequestError,
    "bad_request": BadRequestError,
    "out_of_range": BadRequestError,
    "not_found": NotFoundError,
    "unauthorized": UnauthorizedError,
    "too_large": TooLargeError,
    "unavailable": UnavailableError,
    "timeout": UnavailableError,
    "bad_answer": ProtocolError,
    "closed": ClientClosedError,
    "used_after_fork": UsedAfterForkError,
}


def error_class(code, http_status=0):
    """The exception class for a JSON error code."""
    cls = _BY_CODE.get(code)
    if cls is not None:
        return cls
    if http_status >= 500:
        return ServerError
    return LmapError
