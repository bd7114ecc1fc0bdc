"""The `flask` commands, with each bad input answered by a message, exit 1, nothing written."""

import pytest
from flask import Flask

from portal.db import get_db
from portal.orgs import registry
from tests.conftest import ADMIN_EMAIL, orgs_dir


def _orgs(app: Flask) -> list[str]:
    with app.app_context():
        return [o["name"] for o in registry.list_orgs(get_db())]


def test_cli_orgs_create_list_delete(app: Flask, runner) -> None:
    result = runner.invoke(args=["orgs", "create", "acme", "--email", "a@acme.com",
                                 "--password", "passw0rd!", "--template", "sales"])
    assert result.exit_code == 0, result.output
    assert "Created organization acme from template sales" in result.output
    assert (orgs_dir(app) / "acme.db").exists()
    listed = runner.invoke(args=["orgs", "list"])
    assert "acme" in listed.output and "users=1" in listed.output
    deleted = runner.invoke(args=["orgs", "delete", "acme", "--yes"])
    assert deleted.exit_code == 0, deleted.output
    assert _orgs(app) == []
    assert not (orgs_dir(app) / "acme.db").exists()


def test_cli_init_db(app: Flask, runner) -> None:
    result = runner.invoke(args=["init-db"])
    assert result.exit_code == 0 and "ready" in result.output


def test_cli_password_is_prompted_when_omitted(app: Flask, runner) -> None:
    result = runner.invoke(args=["orgs", "create", "prompted", "--email", "a@b.co"],
                           input="passw0rd!\npassw0rd!\n")
    assert result.exit_code == 0, result.output
    assert _orgs(app) == ["prompted"]


@pytest.mark.parametrize("args, message", [
    (["taken", "--email", "x@y.co", "--password", "passw0rd!"], "is taken"),
    (["ab", "--email", "x@y.co", "--password", "passw0rd!"], "3-63 characters"),
    (["Upper", "--email", "x@y.co", "--password", "passw0rd!"], "lower-case"),
    (["9lives", "--email", "x@y.co", "--password", "passw0rd!"], "starting with a letter"),
    (["has_underscore", "--email", "x@y.co", "--password", "passw0rd!"], "lower-case"),
    (["new-org", "--email", "x@y.co", "--password", "passw0rd!", "--template", "nope"],
     "unknown template"),
    (["new-org", "--email", "x@y.co", "--password", "short1"], "at least 8"),
    (["new-org", "--email", "x@y.co", "--password", "lettersonly"], "letters and digits"),
    (["new-org", "--email", "not-an-email", "--password", "passw0rd!"], "e-mail"),
])
def test_cli_orgs_create_bad_input_writes_nothing(app: Flask, runner, args: list[str],
                                                  message: str) -> None:
    runner.invoke(args=["orgs", "create", "taken", "--email", "t@t.co", "--password", "passw0rd!"])
    files_before = sorted(p.name for p in orgs_dir(app).iterdir())
    result = runner.invoke(args=["orgs", "create", *args])
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output
    assert _orgs(app) == ["taken"]
    assert sorted(p.name for p in orgs_dir(app).iterdir()) == files_before


def test_cli_orgs_delete_unknown(app: Flask, runner) -> None:
    result = runner.invoke(args=["orgs", "delete", "ghost", "--yes"])
    assert result.exit_code == 1 and "does not exist" in result.output


@pytest.mark.parametrize("token_id", ["abc", "0", "-1", "1.5"])
def test_cli_tokens_revoke_refuses_a_bad_id(app: Flask, runner, sales_org,
                                             token_id: str) -> None:
    created = runner.invoke(args=["tokens", "create", "sales", "--email", ADMIN_EMAIL])
    assert created.exit_code == 0, created.output
    result = runner.invoke(args=["tokens", "revoke", "sales", "--", token_id])
    assert result.exit_code == 1, result.output
    assert f"{token_id!r} is not a token id" in result.output
    assert "Traceback" not in result.output
    assert "active" in runner.invoke(args=["tokens", "list", "sales"]).output
