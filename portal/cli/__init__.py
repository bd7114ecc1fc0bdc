"""The `flask` commands, one module per noun of the domain, registered by the app factory."""

from flask import Flask

from portal.cli import (  # noqa: F401 (sync_settings adds to sync)
    applications,
    orgs,
    sync,
    sync_settings,
    tokens,
    transactions,
)


def init_app(app: Flask) -> None:
    """Register the commands on the app's CLI."""
    app.cli.add_command(orgs.init_db)
    for group in (orgs.orgs_cli, tokens.tokens_cli, applications.applications_cli,
                  sync.sync_cli, transactions.transactions_cli):
        app.cli.add_command(group)
