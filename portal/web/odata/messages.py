"""The request and response values the OData handlers take and return.

Handlers never touch Flask's request: the blueprint and `$batch` both build an
ApiRequest, so a request inside a batch runs exactly like a top-level one.
"""

from dataclasses import dataclass, field
from typing import Any

import orjson
from werkzeug.datastructures import Headers, MultiDict

from portal.errors import PortalError
from portal.orgs.store import OrgDb

JSON_TYPE = "application/json; odata.metadata=minimal; charset=utf-8"
ODATA_VERSION = "4.0"


class ProtocolError(PortalError):
    """A request the protocol refuses, with its HTTP status and OData error code."""

    def __init__(self, status: int, code: str, message: str, *,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.headers = headers or {}


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


def portal_error_response(error: PortalError) -> ApiResponse:
    """The OData error answering one of the portal's named exceptions."""
    headers = error.headers if isinstance(error, ProtocolError) else None
    return error_response(error.status, error.code, error.message, target=error.field,
                          headers=headers)


def bad_request(message: str, target: str | None = None) -> ProtocolError:
    """A 400 for a malformed request."""
    error = ProtocolError(400, "BadRequest", message)
    error.field = target
    return error
