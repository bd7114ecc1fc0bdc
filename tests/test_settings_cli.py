"""`flask sync entities|filter|settings`: each setting changed by a script, bad input refused
with its reason and nothing changed."""

from pathlib import Path

import pytest
from flask import Flask
from redis import Redis

from portal.db import get_db
from portal.sync import connections
from tests.test_admin import orgs, state  # noqa: F401 (fixture)


def test_cli_changes_entities_filter_and_settings(orgs: Flask, tmp_path: Path) -> None:  # noqa: F811
    runner = orgs.test_cli_runner()
    listed = runner.invoke(args=["sync", "entities", "acme"])
    assert listed.exit_code == 0 and "lead" in listed.output
    changed = runner.invoke(args=["sync", "entities", "acme", "lead", "contact", "--disable",
                                  "--no-sync-deletion"])
    assert changed.exit_code == 0, changed.output
    assert "lead" in changed.output and "disabled  sync deletion off" in changed.output
    xml = tmp_path / "filter.xml"
    xml.write_text('<filter><condition attribute="name" operator="like" value="A%"/></filter>')
    set_filter = runner.invoke(args=["sync", "filter", "acme", "account", "--fetchxml", str(xml)])
    assert set_filter.exit_code == 0, set_filter.output
    assert 'operator="like" value="A%"' in set_filter.output
    shown = runner.invoke(args=["sync", "filter", "acme", "account"])
    assert 'value="A%"' in shown.output
    cleared = runner.invoke(args=["sync", "filter", "acme", "account", "--clear"])
    assert cleared.exit_code == 0 and "cleared" in cleared.output
    settings = runner.invoke(args=["sync", "settings", "acme", "--write-mode", "instant",
                                   "--conflict-policy", "newest-wins"])
    assert settings.exit_code == 0, settings.output
    assert "write mode: instant" in settings.output and "newest-wins" in settings.output
    assert "streams: 4 asked, 1 used: 1 entity is enabled (the portal default)" \
        in settings.output


def test_cli_sets_a_connections_streams_and_shows_what_a_run_may_use(
        orgs: Flask) -> None:  # noqa: F811
    runner = orgs.test_cli_runner()
    changed = runner.invoke(args=["sync", "settings", "acme", "--streams", "2"])
    assert changed.exit_code == 0, changed.output
    assert "streams: 2 asked, 2 used\n" in changed.output
    assert "streams: 16 asked, 3 used: 3 entities are enabled\n" in runner.invoke(
        args=["sync", "settings", "acme", "--streams", "16"]).output
    with orgs.app_context():
        assert connections.connection_of_org(get_db(), "acme").streams == 16
    cleared = runner.invoke(args=["sync", "settings", "acme", "--streams", "default"])
    assert "(the portal default)" in cleared.output
    with orgs.app_context():
        assert connections.connection_of_org(get_db(), "acme").streams is None


@pytest.mark.parametrize("args, message", [
    (["sync", "entities", "acme", "ghost", "--disable"], "'ghost' is not an entity"),
    (["sync", "entities", "acme", "--disable"], "choose at least one entity"),
    (["sync", "entities", "acme", "lead"], "say what to change"),
    (["sync", "entities", "beta", "lead", "--disable"], "is not connected"),
    (["sync", "filter", "acme", "ghost", "--clear"], "no entity 'ghost'"),
    (["sync", "filter", "acme", "account", "--fetchxml", "-"], "does not exist in entity"),
    (["sync", "filter", "acme", "account", "--fetchxml", "-", "--clear"], "not both"),
    (["sync", "settings", "acme", "--write-mode", "sometimes"], "Invalid value"),
    (["sync", "settings", "ghost", "--write-mode", "instant"], "does not exist"),
    (["sync", "settings", "acme", "--streams", "0"], "streams must be a whole number from 1 to 16"),
    (["sync", "settings", "acme", "--streams", "17"], "streams must be a whole number from 1"),
    (["sync", "settings", "acme", "--streams", "abc"], "streams must be a whole number from 1"),
    (["sync", "settings", "acme", "--write-mode", "instant", "--streams", "abc"],
     "streams must be a whole number"),
])
def test_cli_bad_settings_are_refused_and_change_nothing(orgs: Flask, redis: Redis,  # noqa: F811
                                                        args: list[str], message: str) -> None:
    before = state(orgs, redis)
    result = orgs.test_cli_runner().invoke(args=args, input=(
        '<filter><condition attribute="nosuch" operator="eq" value="1"/></filter>'))
    assert result.exit_code != 0 and message in result.output, result.output
    assert state(orgs, redis) == before
