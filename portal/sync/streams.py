"""How many entities a run downloads at once: what was asked, what is used, and why fewer.

The connection asks (its own setting, else the portal's SYNC_STREAMS); each limit
(what the backend allows for this server, how many entities there are to read)
may lower it. The run's log and the admin's Connection tab say the same sentence.
"""

from dataclasses import dataclass

MAX_STREAMS = 16  # the most a connection may ask for


@dataclass(frozen=True)
class Streams:
    """Entities read at once: asked, used, and the limit that made it fewer (if any)."""

    asked: int
    used: int
    cap: str | None = None  # e.g. "the dynamics backend allows 1"

    def describe(self) -> str:
        """'4 asked, 1 used: the dynamics backend allows 1' (or '4 asked, 4 used')."""
        text = f"{self.asked} asked, {self.used} used"
        return f"{text}: {self.cap}" if self.cap else text

    def log_line(self) -> str:
        """The run log's line: 'N entities at once (M asked, capped: …)'."""
        why = f", capped: {self.cap}" if self.cap else ""
        return f"{self.used} {'entity' if self.used == 1 else 'entities'} at once " \
               f"({self.asked} asked{why})"


def decide(asked: int, limits: list[tuple[int, str]]) -> Streams:
    """The streams a run uses: `asked`, lowered by the tightest (limit, reason); at least 1."""
    used, cap = asked, None
    for limit, reason in limits:
        if max(1, limit) < used:
            used, cap = max(1, limit), reason
    return Streams(asked, used, cap)
