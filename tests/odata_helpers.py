"""Small helpers shared by the Org API tests."""

import base64

from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD

ROOT = "/odata/v4/sales/"


def basic(email: str = ADMIN_EMAIL, password: str = ADMIN_PASSWORD) -> dict[str, str]:
    """Headers with HTTP Basic credentials."""
    token = base64.b64encode(f"{email}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


AUTH = basic()
