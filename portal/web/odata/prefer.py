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


def parse_prefer(values: list[str]) -> Preferences:
    """Read every Prefer header; unknown preferences are ignored, as RFC 7240 says."""
    prefs = Preferences()
    for value in values:
        for part in value.split(","):
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
    return prefs
