"""The request and response values the OData handlers take and return.

Handlers never touch Flask's request: the blueprint and `$batch` both build an
ApiRequest, so a request inside a batch runs exactly like a top-level one.
"""

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson
from werkzeug.datastructures import Headers, MultiDict

from portal.errors import PortalError
from portal.orgs.store import OrgDb
from portal.web.odata.dialect import ORG_API, Dialect

JSON_TYPE = "application/json; odata.metadata=minimal; charset=utf-8"
ODATA_VERSION = "4.0"


class ErrorKind(StrEnum):
    """A kind of refusal, named once; each dialect has its own code for it (ERROR_CODES)."""

    BAD_REQUEST = "bad_request"
    INVALID_INPUT = "invalid_input"  # a value the data layer refuses
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"  # no privilege for this (e.g. customization by a non-admin)
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    DUPLICATE = "duplicate"  # a create of a record or definition that exists
    DUPLICATE_PRECONDITION = "duplicate_precondition"  # 412: If-None-Match: * on a record
    CONCURRENCY = "concurrency"  # 412: If-Match names an older version
    METADATA_REFUSED = "metadata_refused"  # a metadata change would lose data
    DELTA_TOKEN_UNKNOWN = "delta_token_unknown"  # altered, or from another org or set
    DELTA_TOKEN_EXPIRED = "delta_token_expired"  # older than the change feed it continues
    FAILED_DEPENDENCY = "failed_dependency"
    # Service protection (429): a user's requests, execution time or concurrent requests.
    TOO_MANY_REQUESTS = "too_many_requests"
    TOO_MUCH_EXECUTION_TIME = "too_much_execution_time"
    TOO_MANY_CONCURRENT = "too_many_concurrent"
    NOT_IMPLEMENTED = "not_implemented"
    AGGREGATE_LIMIT = "aggregate_limit"  # a FetchXML aggregate over too many records
    INTERNAL = "internal"


@dataclass(frozen=True)
class ErrorCode:
    """The code of one ErrorKind in each dialect's error body, and Dataverse's own words."""

    odata: str  # the Org API's code (unchanged by the Dataverse dialect)
    dataverse: str  # Dataverse's hex code (web service error codes, Microsoft Learn)
    dataverse_message: str | None = None  # Dataverse's message, where it always says the same


# Which ErrorCode field an error body takes its code from: the dialect names one.
ERROR_CODE_FIELDS = ("odata", "dataverse")
# Dataverse's codes, from Microsoft Learn's "Web service error codes" and "Troubleshoot
# Dataverse client errors" (ObjectDoesNotExist -2147220969, DuplicateRecord -2147220937,
# PrivilegeDenied -2147220960, AccessTokenExpired, ExpiredVersionStamp -2147204270) and the
# $batch sample's validation error (0x80044331). Messages: "Perform conditional operations
# using the Web API" (412s) and the change tracking samples (ExpiredVersionStamp).
INVALID_ARGUMENT = "0x80040203"
ERROR_CODES: dict[ErrorKind, ErrorCode] = {
    ErrorKind.BAD_REQUEST: ErrorCode("BadRequest", INVALID_ARGUMENT),
    ErrorKind.INVALID_INPUT: ErrorCode("InvalidInput", "0x80044331"),
    ErrorKind.UNAUTHORIZED: ErrorCode("Unauthorized", "0x8005F101"),
    ErrorKind.FORBIDDEN: ErrorCode("Forbidden", "0x80040220"),
    ErrorKind.NOT_FOUND: ErrorCode("NotFound", "0x80040217"),
    ErrorKind.METHOD_NOT_ALLOWED: ErrorCode("MethodNotAllowed", INVALID_ARGUMENT),
    ErrorKind.DUPLICATE: ErrorCode("AlreadyExists", "0x80040237"),
    ErrorKind.CONCURRENCY: ErrorCode(
        "PreconditionFailed", "0x80060882",
        "The version of the existing record doesn't match the RowVersion property provided."),
    ErrorKind.DUPLICATE_PRECONDITION: ErrorCode(
        "PreconditionFailed", "0x80040237", "A record with matching key values already exists."),
    ErrorKind.METADATA_REFUSED: ErrorCode("MetadataChangeRefused", INVALID_ARGUMENT),
    ErrorKind.DELTA_TOKEN_UNKNOWN: ErrorCode(
        "BadRequest", "0x80044352",
        "Version stamp associated with the client has expired. Please perform a full sync."),
    ErrorKind.DELTA_TOKEN_EXPIRED: ErrorCode(
        "DeltaTokenExpired", "0x80044352",
        "Version stamp associated with the client has expired. Please perform a full sync."),
    ErrorKind.FAILED_DEPENDENCY: ErrorCode("FailedDependency", INVALID_ARGUMENT),
    # "Service protection API limits" (api-limits.md); the messages name the limits set.
    ErrorKind.TOO_MANY_REQUESTS: ErrorCode("TooManyRequests", "0x80072322"),
    ErrorKind.TOO_MUCH_EXECUTION_TIME: ErrorCode("TooManyRequests", "0x80072321"),
    ErrorKind.TOO_MANY_CONCURRENT: ErrorCode("TooManyRequests", "0x80072326"),
    ErrorKind.NOT_IMPLEMENTED: ErrorCode("NotImplemented", INVALID_ARGUMENT),
    # "Aggregate data using FetchXml" (fetchxml/aggregate-data.md), Limitations.
    ErrorKind.AGGREGATE_LIMIT: ErrorCode(
        "AggregateQueryRecordLimit", "0x8004E023",
        "AggregateQueryRecordLimit exceeded. Cannot perform this operation."),
    ErrorKind.INTERNAL: ErrorCode("InternalServerError", "0x80040216"),
}
# The kind of an error that names only its Org API code (the first kind with that code:
# a 412 is a concurrency failure unless it says it is a duplicate).
KIND_OF_CODE: dict[str, ErrorKind] = {}
for _kind, _code in ERROR_CODES.items():
    KIND_OF_CODE.setdefault(_code.odata, _kind)


class ProtocolError(PortalError):
    """A request the protocol refuses, with its HTTP status and OData error code."""

    def __init__(self, status: int, code: str, message: str, *,
                 headers: dict[str, str] | None = None, kind: ErrorKind | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.headers = headers or {}
        self.kind = kind


def error_kind(error: PortalError) -> ErrorKind | None:
    """The kind of a refusal: its own, or the one its Org API code names."""
    kind = getattr(error, "kind", None)
    if isinstance(kind, ErrorKind):
        return kind
    return KIND_OF_CODE.get(error.code)


def dialect_code(kind: ErrorKind | None, odata_code: str, status: int, field: str
                 ) -> tuple[str, str | None]:
    """(code, fixed message or None) of an error in the dialect whose code field is `field`."""
    if field == "odata":
        return odata_code, None
    entry = ERROR_CODES.get(kind) if kind is not None else None
    if entry is None:
        return (ERROR_CODES[ErrorKind.INTERNAL].dataverse if status >= 500
                else INVALID_ARGUMENT), None
    return getattr(entry, field), entry.dataverse_message if field == "dataverse" else None


@dataclass
class ApiRequest:
    """One OData request, relative to an org's service root."""

    method: str
    path: str  # e.g. "", "$metadata", "accounts", "accounts(<guid>)"
    args: MultiDict[str, str]
    headers: Headers
    body: bytes
    service_root: str  # absolute, ends with "/"
    org: OrgDb
    secret: str
    user: dict[str, Any] = field(default_factory=dict)  # the authenticated org user
    # The ErrorCode field this request's error bodies take their codes from: the dialect's
    # (set from it by the blueprint; its own field so a request can be coded on its own).
    error_codes: str = "odata"
    dialect: Dialect = ORG_API


@dataclass
class ApiResponse:
    """What a handler answers: status, headers and an already encoded body."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        """The body decoded (for $batch, which embeds bodies as JSON)."""
        return orjson.loads(self.body) if self.body else None


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None
                  ) -> ApiResponse:
    """A JSON answer encoded with orjson."""
    return raw_json_response(orjson.dumps(payload), status, headers)


def raw_json_response(body: bytes, status: int = 200, headers: dict[str, str] | None = None
                      ) -> ApiResponse:
    """A JSON answer whose body is already encoded."""
    return ApiResponse(status, body, {"Content-Type": JSON_TYPE, **(headers or {})})


def error_response(status: int, code: str, message: str, *, target: str | None = None,
                   headers: dict[str, str] | None = None) -> ApiResponse:
    """An OData JSON error: {"error": {"code", "message"[, "target"]}}."""
    error: dict[str, Any] = {"code": code, "message": message}
    if target:
        error["target"] = target
    return json_response({"error": error}, status, headers)


def portal_error_response(error: PortalError, codes: str = "odata") -> ApiResponse:
    """The OData error answering one of the portal's named exceptions, coded as `codes` says."""
    headers = error.headers if isinstance(error, ProtocolError) else None
    code, fixed = dialect_code(error_kind(error), error.code, error.status, codes)
    return error_response(error.status, code, fixed or error.message, target=error.field,
                          headers=headers)


def kind_error_response(kind: ErrorKind, status: int, message: str, codes: str = "odata"
                        ) -> ApiResponse:
    """An OData error of a kind, coded as `codes` says."""
    code, fixed = dialect_code(kind, ERROR_CODES[kind].odata, status, codes)
    return error_response(status, code, fixed or message)


def bad_request(message: str, target: str | None = None) -> ProtocolError:
    """A 400 for a malformed request."""
    error = ProtocolError(400, "BadRequest", message)
    error.field = target
    return error
