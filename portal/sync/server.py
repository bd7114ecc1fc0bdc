"""Reaching a connection's server from a request: test its credentials, read its metadata.

Jobs reach the server through their own run context (jobs.sync); the admin
needs two short calls outside a job: Connection's *Test* and the preview of
Update Client Metadata. Both open a backend, make one call, and close it.
"""

from collections.abc import Iterator
from contextlib import contextmanager

from sqlite_utils import Database

from portal.backends.base import Backend
from portal.backends.registry import make_backend
from portal.orgs.metadata import Entity
from portal.sync import connections

# A person is waiting: one try, not the sync jobs' retries with backoff.
RETRIES = 1


@contextmanager
def server_backend(db: Database, key: bytes, connection_id: int, *,
                   allow_private: bool) -> Iterator[Backend]:
    """A backend for the connection's server with its stored credentials, closed after use."""
    connection = connections.get_connection(db, connection_id)
    backend = make_backend(connection.backend, connection.url, connection.username,
                           connections.server_password(db, key, connection_id),
                           retries=RETRIES, allow_private=allow_private,
                           **connection.server_options)
    try:
        yield backend
    finally:
        backend.close()


def test_credentials(db: Database, key: bytes, connection_id: int, *,
                     allow_private: bool) -> str:
    """Check the stored credentials against the server; returns who the server says we are."""
    with server_backend(db, key, connection_id, allow_private=allow_private) as backend:
        return backend.check_credentials()


def read_server_metadata(db: Database, key: bytes, connection_id: int, *,
                         allow_private: bool) -> list[Entity]:
    """The server's entities and attributes as they are now."""
    with server_backend(db, key, connection_id, allow_private=allow_private) as backend:
        return backend.read_metadata()
