"""`flask tokens create/list/revoke`: the API tokens of an organization's users."""

import click

from portal.cli.base import Id, PortalGroup
from portal.db import get_db
from portal.orgs import tokens

tokens_cli = PortalGroup("tokens", help="Create, list and revoke API tokens of an organization.")


@tokens_cli.command("create")
@click.argument("org")
@click.option("--email", required=True, help="E-mail of the org user the token acts as.")
def create_token(org: str, email: str) -> None:
    """Create an API token for an org user and print it (it is shown only once)."""
    token_id, token = tokens.create_token(get_db(), org, email)
    click.echo(f"Token {token_id} for {email} in {org} (shown only once):")
    click.echo(token)


@tokens_cli.command("revoke")
@click.argument("org")
@click.argument("token_id", type=Id("token"))
def revoke_token(org: str, token_id: int) -> None:
    """Revoke an API token of an organization."""
    tokens.revoke_token(get_db(), org, token_id)
    click.echo(f"Revoked token {token_id} of {org}")


@tokens_cli.command("list")
@click.argument("org")
def list_tokens(org: str) -> None:
    """List an organization's API tokens (ids and users, never the tokens)."""
    rows = tokens.list_tokens(get_db(), org)
    if not rows:
        click.echo("No tokens.")
    for row in rows:
        state = f"revoked={row['revoked']}" if row["revoked"] else "active"
        click.echo(f"{row['id']:<6} {row['email']:<40} created={row['created']} {state}")
