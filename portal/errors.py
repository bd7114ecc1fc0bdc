"""Named exceptions of the domain. Each carries the HTTP status that best answers it."""


class PortalError(Exception):
    """Base of every error the portal answers with a message instead of a stack trace."""

    status = 400
    code = "BadRequest"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidInput(PortalError):
    """A value the caller sent is not acceptable; `field` names it."""

    code = "InvalidInput"


class NotAvailable(InvalidInput):
    """A known kind of thing (e.g. a backend type) that this portal does not offer yet."""

    status = 422
    code = "NotAvailable"


class NotFound(PortalError):
    """The org, entity or record does not exist (or is not the caller's to see)."""

    status = 404
    code = "NotFound"


class AlreadyExists(PortalError):
    """A create named something that exists already."""

    status = 409
    code = "AlreadyExists"


class PreconditionFailed(PortalError):
    """An If-Match/If-None-Match condition did not hold."""

    status = 412
    code = "PreconditionFailed"


class MetadataChangeRefused(PortalError):
    """A metadata change would lose data silently, or break the org's schema."""

    status = 409
    code = "MetadataChangeRefused"


class BackendError(PortalError):
    """The server org answered with an error, or could not be reached; message says which."""

    status = 502
    code = "ServerError"


class CredentialsRefused(BackendError):
    """The server org refused the connection's user name or password."""

    code = "CredentialsRefused"


class InvalidSetting(PortalError):
    """A setting of the portal is unknown or of the wrong type: the app does not start."""

    status = 500
    code = "InvalidSetting"


class ChangesExpired(PortalError):
    """Changes after a version can no longer be given exactly: the reader must start over."""

    code = "DeltaTokenExpired"


class MalformedMultipart(InvalidInput):
    """A multipart/mixed batch body that cannot be read (framing, headers, limits)."""

    code = "BadRequest"


class ServerLimited(BackendError):
    """The server's limits stopped the run (429 after the retries): it resumes next run."""

    status = 503
    code = "ServerLimited"
