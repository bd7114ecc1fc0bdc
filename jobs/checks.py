"""The admin's checks of a connection's server, run by a worker while the page waits.

Each returns a small dict for the page: `error` is the server's refusal in
words (the check itself ran; a bug or a dead worker fails the job instead,
and the page shows the job's reason).
"""

from typing import Any

from flask import current_app

from jobs.context import app_context
from portal import crypto
from portal.db import get_db
from portal.errors import PortalError
from portal.orgs.store import open_org, orgs_path
from portal.sync import connections, server


def preview_metadata(connection_id: int) -> dict[str, Any]:
    """Update Client Metadata's preview: what the update would change in the client org."""
    with app_context() as app:
        db = get_db()
        connection = connections.get_connection(db, connection_id)
        try:
            with open_org(orgs_path(app), connection.org_name) as org:
                preview = server.preview_metadata(
                    db, crypto.load_key(app.instance_path), org, connection_id,
                    allow_private=current_app.config["ALLOW_PRIVATE_SERVERS"])
        except PortalError as refused:
            return {"error": refused.message, "preview": None}
        return {"error": None, "preview": preview}


def check_credentials(connection_id: int) -> dict[str, Any]:
    """Connection's Test: the stored credentials against the server; who it says we are."""
    with app_context() as app:
        try:
            who = server.test_credentials(
                get_db(), crypto.load_key(app.instance_path), connection_id,
                allow_private=current_app.config["ALLOW_PRIVATE_SERVERS"])
        except PortalError as refused:
            return {"error": refused.message, "who": None}
        return {"error": None, "who": who}
