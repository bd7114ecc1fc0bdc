"""The one conflict decision of uploads and downloads: which side each policy keeps."""

import pytest

from portal.sync.connections import ConflictPolicy
from portal.sync.engine import Plan, Side, winner

EARLY, LATE = "2026-01-01T10:00:00Z", "2026-01-01T11:00:00Z"


@pytest.mark.parametrize("policy, client_time, server, kept", [
    (ConflictPolicy.SERVER_WINS, LATE, {"modifiedon": EARLY}, Side.SERVER),
    (ConflictPolicy.SERVER_WINS, LATE, None, Side.SERVER),
    (ConflictPolicy.CLIENT_WINS, EARLY, {"modifiedon": LATE}, Side.CLIENT),
    (ConflictPolicy.CLIENT_WINS, EARLY, None, Side.CLIENT),
    (ConflictPolicy.NEWEST_WINS, LATE, {"modifiedon": EARLY}, Side.CLIENT),
    (ConflictPolicy.NEWEST_WINS, EARLY, {"modifiedon": LATE}, Side.SERVER),
    (ConflictPolicy.NEWEST_WINS, LATE, {"modifiedon": LATE}, Side.SERVER),  # a tie: the server's
    (ConflictPolicy.NEWEST_WINS, LATE, {}, Side.CLIENT),  # the server gave no time
    (ConflictPolicy.NEWEST_WINS, LATE, None, Side.SERVER),  # a deletion counts as newest
])
def test_conflict_winner_by_policy(policy: ConflictPolicy, client_time: str,
                                   server: dict[str, str] | None, kept: Side) -> None:
    assert winner(policy, client_time, server) is kept


def test_plan_takes_a_policy_by_name_and_refuses_an_unknown_one() -> None:
    assert Plan([], "client-wins").conflict_policy is ConflictPolicy.CLIENT_WINS
    with pytest.raises(ValueError, match="loudest-wins"):
        Plan([], "loudest-wins")
