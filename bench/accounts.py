"""The account rows every benchmark writes: nine attributes set, as a CRM holds them."""

import uuid
from typing import Any


def account_row(i: int) -> dict[str, Any]:
    """Account number i (its id is the GUID of i + 1); benchmarks add their tenth attribute."""
    return {
        "accountid": str(uuid.UUID(int=i + 1, version=4)),
        "name": f"Account {i}",
        "accountnumber": f"A-{i:08d}",
        "telephone1": f"+421 2 {i:07d}",
        "emailaddress1": f"info{i}@example.com",
        "address1_city": "Bratislava",
        "revenue": i * 10.5,
        "numberofemployees": i % 5000,
        "creditonhold": i % 2 == 0,
    }
