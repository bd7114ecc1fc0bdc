"""Settings are declared once (portal/config.py) and checked when the app starts."""

import re
from pathlib import Path

import pytest

from portal import create_app
from portal.config import SETTINGS
from portal.errors import InvalidSetting

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An instance folder, with no PORTAL_* variable of the caller's environment."""
    monkeypatch.setenv("PORTAL_INSTANCE_PATH", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("variable, value, named", [
    ("PORTAL_SYNC_PAGESIZE", "50", "unknown setting PORTAL_SYNC_PAGESIZE; did you mean "
                                   "PORTAL_SYNC_PAGE_SIZE?"),
    ("PORTAL_NOTHING_LIKE_IT", "1", "unknown setting PORTAL_NOTHING_LIKE_IT"),
    ("PORTAL_SYNC_PAGE_SIZE", "many", "setting PORTAL_SYNC_PAGE_SIZE must be an integer, "
                                      "got 'many'"),
    ("PORTAL_SYNC_PAGE_SIZE", "true", "setting PORTAL_SYNC_PAGE_SIZE must be an integer"),
    ("PORTAL_SYNC_PAGE_SIZE", "50.5", "setting PORTAL_SYNC_PAGE_SIZE must be an integer"),
    ("PORTAL_ALLOW_PRIVATE_SERVERS", "1", "setting PORTAL_ALLOW_PRIVATE_SERVERS must be true "
                                          "or false, got 1"),
    ("PORTAL_ALLOW_PRIVATE_SERVERS", "yes", "must be true or false, got 'yes'"),
    ("PORTAL_DATABASE", "5", "setting PORTAL_DATABASE must be a string, got 5"),
    ("PORTAL_RATELIMIT_ENABLED", "\"off\"", "must be true or false or null, got 'off'"),
])
def test_bad_variable_stops_the_start_naming_it(instance: Path, monkeypatch: pytest.MonkeyPatch,
                                                variable: str, value: str, named: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(InvalidSetting, match=re.escape(named)):
        create_app()
    assert not (instance / "portal.db").exists()  # nothing was started


def test_bad_setting_of_instance_config_or_test_config_is_named(instance: Path) -> None:
    (instance / "config.py").write_text("SYNC_UPLOAD_BATCH = '1000'\n")
    with pytest.raises(InvalidSetting, match="setting SYNC_UPLOAD_BATCH must be an integer"):
        create_app()
    (instance / "config.py").unlink()
    with pytest.raises(InvalidSetting, match="setting SYNC_HTTP_RETRIES must be an integer"):
        create_app({"SYNC_HTTP_RETRIES": None})


def test_good_variables_are_taken(instance: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTAL_SYNC_PAGE_SIZE", "50")
    monkeypatch.setenv("PORTAL_ALLOW_PRIVATE_SERVERS", "true")
    monkeypatch.setenv("PORTAL_RATELIMIT_ENABLED", "null")
    monkeypatch.setenv("PORTAL_CONNECT_RATE_LIMIT", "5 per minute")
    monkeypatch.setenv("PORTAL_SESSION_COOKIE_SECURE", "true")  # Flask's own settings too
    app = create_app()
    assert app.config["SYNC_PAGE_SIZE"] == 50
    assert app.config["ALLOW_PRIVATE_SERVERS"] is True
    assert app.config["RATELIMIT_ENABLED"] is None
    assert app.config["CONNECT_RATE_LIMIT"] == "5 per minute"
    assert app.config["SESSION_COOKIE_SECURE"] is True
    assert app.config["SYNC_UPLOAD_BATCH"] == 1000  # the declared default


def test_readme_lists_every_declared_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Configuration"):readme.index("## Production")]
    listed = set(re.findall(r"^\| `PORTAL_([A-Z_]+)` \|", table, re.MULTILINE))  # not (env)
    assert listed == {s.name for s in SETTINGS}


def _slow_secret() -> bytes:
    """A secret that takes a while to make: the time in which other processes look."""
    import secrets
    import time

    time.sleep(0.3)
    return secrets.token_hex(32).encode()


def _read_secret(folder: str) -> bytes:
    from portal.config import instance_secret

    return instance_secret(folder, "secret_key", _slow_secret)


def _default_signals() -> None:
    """A pool child's SIGTERM as a process's own: it ends the child.

    An RQ worker run in this test process (SimpleWorker.work) leaves its SIGTERM handler
    installed, and forked children inherit it: the pool's terminate() then raised
    StopRequested in them instead of ending them, and one hung the test in CI.
    """
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_processes_starting_at_once_agree_on_one_whole_secret(tmp_path: Path) -> None:
    """Web workers booting together: none reads the file before it is written whole."""
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(6, initializer=_default_signals) as pool:
        seen = pool.map(_read_secret, [str(tmp_path)] * 6)
    assert len(set(seen)) == 1 and len(seen[0]) == 64
    assert [p.name for p in tmp_path.iterdir()] == ["secret_key"]  # no drafts left


def test_an_empty_secret_file_stops_the_start_naming_it(tmp_path: Path) -> None:
    from portal.config import load_secret_key

    (tmp_path / "secret_key").write_bytes(b"")
    with pytest.raises(RuntimeError, match="secret_key is empty"):
        load_secret_key(str(tmp_path))
