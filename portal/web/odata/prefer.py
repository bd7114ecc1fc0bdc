"""The Prefer header (RFC 7240 as OData uses it) and the Preference-Applied answer."""

from dataclasses import dataclass

from portal.web.odata.messages import bad_request


@dataclass
class Preferences:
    """The preferences the Org API honours."""

    maxpagesize: int | None = None
    track_changes: bool = False
    return_: str | None = None  # "minimal" | "representation"
    continue_on_error: bool = False
    include_annotations: str | None = None  # e.g. "*", "OData.Community.Display.V1.*"


def _split(value: str) -> list[str]:
    """Split a Prefer header on commas outside double quotes."""
    parts, quoted, start = [], False, 0
    for i, char in enumerate(value):
        if char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            parts.append(value[start:i])
            start = i + 1
    parts.append(value[start:])
    return parts


def parse_prefer(values: list[str]) -> Preferences:
    """Read every Prefer header; unknown preferences are ignored, as RFC 7240 says."""
    prefs = Preferences()
    for value in values:
        for part in _split(value):
            name, _, arg = part.strip().partition("=")
            name = name.strip().lower()
            arg = arg.strip().strip('"')
            if name == "odata.maxpagesize":
                if not arg.isdigit() or int(arg) < 1:
                    raise bad_request(f"odata.maxpagesize must be a positive number, not {arg!r}")
                prefs.maxpagesize = int(arg[:12])
            elif name == "odata.track-changes":
                prefs.track_changes = True
            elif name == "return" and arg in ("minimal", "representation"):
                prefs.return_ = arg
            elif name == "odata.continue-on-error" and arg.lower() != "false":
                prefs.continue_on_error = True
            elif name == "odata.include-annotations":
                prefs.include_annotations = arg
    return prefs
