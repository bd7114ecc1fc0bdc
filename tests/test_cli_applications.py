"""`flask applications`: application users of an org's Dataverse root, from the command line."""

import re

from flask import Flask

from portal.db import get_db
from portal.orgs import application_users


def test_cli_applications_create_list_revoke(app: Flask, runner, sales_org) -> None:
    created = runner.invoke(args=["applications", "create", "sales", "ETL", "--admin"])
    assert created.exit_code == 0, created.output
    client_id = re.search(r"client id:\s+(\S+)", created.output).group(1)  # type: ignore[union-attr]
    secret = re.search(r"client secret:\s+(\S+)", created.output).group(1)  # type: ignore[union-attr]
    with app.app_context():
        assert application_users.check_client_secret(get_db(), "sales", client_id, secret)
    listed = runner.invoke(args=["applications", "list", "sales"])
    assert client_id in listed.output and "admin" in listed.output and secret not in listed.output
    revoked = runner.invoke(args=["applications", "revoke", "sales", client_id])
    assert revoked.exit_code == 0, revoked.output
    assert "revoked=" in runner.invoke(args=["applications", "list", "sales"]).output
    with app.app_context():
        assert application_users.check_client_secret(get_db(), "sales", client_id, secret) is None


def test_cli_applications_refuse_bad_input(runner, sales_org) -> None:
    for args in (["create", "no-such-org", "ETL"], ["create", "sales", " "],
                 ["revoke", "sales", "not-a-client"]):
        result = runner.invoke(args=["applications", *args])
        assert result.exit_code == 1, result.output
        assert result.output.startswith("Error: ") and "Traceback" not in result.output
