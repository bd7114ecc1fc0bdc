"""`flask init-db` and `flask orgs create/list/delete`: the registry and its hosted orgs.

Every command calls the same data-layer functions as the web; a refused input
prints its reason and exits with code 1, having written nothing.
"""

import click
from flask import current_app
from flask.cli import with_appcontext

from portal.cli.base import PortalGroup
from portal.db import get_db
from portal.orgs import registry
from portal.orgs.store import orgs_path

orgs_cli = PortalGroup("orgs", help="Create, list and delete hosted organizations.")


@click.command("init-db")
@with_appcontext
def init_db() -> None:
    """Create or migrate the registry database."""
    get_db()
    click.echo(f"Registry database ready in {current_app.instance_path}")


@orgs_cli.command("create")
@click.argument("name")
@click.option("--email", required=True, help="E-mail of the org's admin user.")
@click.option("--password", help="Admin password (prompted for if omitted).")
@click.option("--template", help="Start from a template, e.g. 'sales'.")
@click.option("--display-name", help="Display name (defaults to NAME).")
def create_org(name: str, email: str, password: str | None, template: str | None,
               display_name: str | None) -> None:
    """Create a hosted organization with its admin user."""
    if password is None:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    org = registry.create_org(get_db(), orgs_path(current_app), name, email=email,
                              password=password, template=template, displayname=display_name)
    click.echo(f"Created organization {org['name']}"
               + (f" from template {template}" if template else ""))


@orgs_cli.command("list")
def list_orgs() -> None:
    """List the hosted organizations."""
    rows = registry.list_orgs(get_db())
    if not rows:
        click.echo("No organizations.")
    for org in rows:
        click.echo(f"{org['name']:<30} {org['displayname']:<30} users={org['users']} "
                   f"created={org['created']}")


@orgs_cli.command("delete")
@click.argument("name")
@click.confirmation_option(prompt="Delete this organization and all its data?")
def delete_org(name: str) -> None:
    """Delete a hosted organization and all its data."""
    registry.delete_org(get_db(), orgs_path(current_app), name)
    click.echo(f"Deleted organization {name}")
