"""`flask applications create/list/revoke`: an organization's application users (OAuth clients).

An application user signs in to the org's Dataverse root with the client
credentials grant (docs/dataverse-api.md). Its secret is printed once, at
creation; only its SHA-256 is kept.
"""

import click

from portal.cli.base import PortalGroup
from portal.db import get_db
from portal.orgs import application_users

applications_cli = PortalGroup(
    "applications", help="Create, list and revoke application users (OAuth 2.0 clients) of an "
    "organization's Dataverse root.")


@applications_cli.command("create")
@click.argument("org")
@click.argument("name")
@click.option("--admin", is_flag=True, help="Allow it to change the org's metadata.")
def create_application(org: str, name: str, admin: bool) -> None:
    """Create an application user and print its client id and secret (shown only once)."""
    row, secret = application_users.create_application_user(get_db(), org, name, admin=admin)
    click.echo(f"Application user {name!r} of {org}{' (admin)' if admin else ''}")
    click.echo(f"client id:     {row['client_id']}")
    click.echo(f"client secret: {secret}   (shown only once)")


@applications_cli.command("list")
@click.argument("org")
def list_applications(org: str) -> None:
    """List an organization's application users (never their secrets)."""
    rows = application_users.list_application_users(get_db(), org)
    if not rows:
        click.echo("No application users.")
    for row in rows:
        state = f"revoked={row['revoked']}" if row["revoked"] else "active"
        role = "admin" if row["is_admin"] else "user"
        click.echo(f"{row['client_id']}  {row['name']:<30} {role:<5} created={row['created']} "
                   f"{state}")


@applications_cli.command("revoke")
@click.argument("org")
@click.argument("client_id")
def revoke_application(org: str, client_id: str) -> None:
    """Revoke an application user: its secret and every token it holds stop working."""
    application_users.revoke_application_user(get_db(), org, client_id)
    click.echo(f"Revoked application user {client_id} of {org}")
