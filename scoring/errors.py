"""The service's error tree and its HTTP mapping.

Every error a client can cause is a ``ServiceError`` with a stable ``error_code`` and a short
message that names the field, column or row at fault and never repeats the payload::

    ServiceError                      500  INTERNAL_ERROR (only for our own faults)
    ├── BadRequest                    400  MALFORMED_REQUEST (unparseable body)
    │   └── DuplicateKeys             400  DUPLICATE_KEYS (a JSON key given twice)
    ├── InvalidInput                  422  INVALID_INPUT
    │   ├── MissingColumns            422  MISSING_COLUMNS
    │   ├── UnknownColumns            422  UNKNOWN_COLUMNS
    │   ├── DuplicateColumns          422  DUPLICATE_COLUMNS
    │   ├── RowLengthMismatch         422  ROW_LENGTH_MISMATCH
    │   ├── InvalidValue              422  INVALID_VALUE
    │   └── EmptyInput                422  EMPTY_INPUT
    ├── PayloadTooLarge               413  PAYLOAD_TOO_LARGE
    │   └── TooManyRows               413  TOO_MANY_ROWS
    ├── UnsupportedMediaType          415  UNSUPPORTED_MEDIA_TYPE
    ├── ExplanationsUnavailable       422  EXPLANATIONS_UNAVAILABLE (the model cannot explain)
    ├── Unauthorized                  401  UNAUTHORIZED
    ├── NotFound                      404  NOT_FOUND
    ├── BodyTimeout                   408  BODY_TIMEOUT (slow senders)
    ├── ReloadFailed                  502  MODEL_LOAD_FAILED (the old model keeps serving)
    ├── ModelNotReady                 503  MODEL_NOT_READY
    ├── Overloaded                    503  OVERLOADED (with Retry-After)
    └── ScoringTimeout                504  TIMEOUT
    ModelLoadError (not HTTP)         a model URI that cannot be resolved or loaded
"""

from __future__ import annotations

from collections.abc import Iterable

MAX_NAMED = 5
MAX_NAME_CHARS = 64


class ServiceError(Exception):
    """Base of the errors a request can end in; carries its HTTP status and error code."""

    status_code = 500
    error_code = "INTERNAL_ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> dict[str, str]:
        return {"error_code": self.error_code, "message": self.message}


class BadRequest(ServiceError):
    status_code = 400
    error_code = "MALFORMED_REQUEST"


class DuplicateKeys(BadRequest):
    error_code = "DUPLICATE_KEYS"


class InvalidInput(ServiceError):
    status_code = 422
    error_code = "INVALID_INPUT"


class MissingColumns(InvalidInput):
    error_code = "MISSING_COLUMNS"


class UnknownColumns(InvalidInput):
    error_code = "UNKNOWN_COLUMNS"


class DuplicateColumns(InvalidInput):
    error_code = "DUPLICATE_COLUMNS"


class RowLengthMismatch(InvalidInput):
    error_code = "ROW_LENGTH_MISMATCH"


class InvalidValue(InvalidInput):
    error_code = "INVALID_VALUE"


class EmptyInput(InvalidInput):
    error_code = "EMPTY_INPUT"


class PayloadTooLarge(ServiceError):
    status_code = 413
    error_code = "PAYLOAD_TOO_LARGE"


class TooManyRows(PayloadTooLarge):
    error_code = "TOO_MANY_ROWS"


class UnsupportedMediaType(ServiceError):
    status_code = 415
    error_code = "UNSUPPORTED_MEDIA_TYPE"


class ExplanationsUnavailable(ServiceError):
    """The served model gives no exact per-feature contributions (not a LightGBM model).

    422, not 5xx: nothing is broken, the request is well formed, and retrying cannot help; the
    answer depends on which model is served, so it is a property of the request's target that the
    client must learn (and 5xx would page operators for a client's question). Not 501, which
    says the server lacks the method altogether.
    """

    status_code = 422
    error_code = "EXPLANATIONS_UNAVAILABLE"


class NotFound(ServiceError):
    status_code = 404
    error_code = "NOT_FOUND"


class Unauthorized(ServiceError):
    status_code = 401
    error_code = "UNAUTHORIZED"


class BodyTimeout(ServiceError):
    status_code = 408
    error_code = "BODY_TIMEOUT"


class ReloadFailed(ServiceError):
    status_code = 502
    error_code = "MODEL_LOAD_FAILED"


class ModelNotReady(ServiceError):
    status_code = 503
    error_code = "MODEL_NOT_READY"


class Overloaded(ServiceError):
    status_code = 503
    error_code = "OVERLOADED"


class ScoringTimeout(ServiceError):
    status_code = 504
    error_code = "TIMEOUT"


class ModelLoadError(Exception):
    """A model URI that cannot be resolved or loaded; ``str()`` is one line naming URI and cause."""

    def __init__(self, uri: str, cause: str) -> None:
        super().__init__(f"cannot load model {uri!r}: {cause}")
        self.uri = uri
        self.cause = cause


def quote_name(name: object) -> str:
    """A client-supplied name, quoted and cut short so that errors never carry much payload."""
    text = str(name)
    if len(text) > MAX_NAME_CHARS:
        text = text[:MAX_NAME_CHARS] + "…"
    return repr(text)


def name_list(names: Iterable[object]) -> str:
    """At most ``MAX_NAMED`` quoted names, then how many more."""
    items = list(names)
    shown = ", ".join(quote_name(n) for n in items[:MAX_NAMED])
    more = len(items) - MAX_NAMED
    return f"{shown} and {more} more" if more > 0 else shown
