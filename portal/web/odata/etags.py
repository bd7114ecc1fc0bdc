"""Weak ETags of records: W/"<versionnumber>", as Dataverse makes them."""

from portal.web.odata.messages import ProtocolError


def etag(version: int) -> str:
    """The ETag of a record at this version."""
    return f'W/"{version}"'


def parse_if_match(value: str | None) -> tuple[bool, int | None]:
    """Read If-Match/If-None-Match: (is "*", version or None).

    A value that is no ETag of ours can match no record, so it is a failed
    precondition (412), not a malformed request.
    """
    if value is None:
        return False, None
    value = value.strip()
    if value == "*":
        return True, None
    text = value[2:] if value.startswith("W/") else value
    text = text.strip('"')
    if not text.isdigit():
        raise ProtocolError(412, "PreconditionFailed",
                            f"the ETag {value!r} matches no version of this record")
    return False, int(text[:19])
