"""`flask` commands: init-db, orgs create/list/delete, tokens create/list/revoke.

Every command calls the same data-layer functions as the web; a refused input
prints its reason and exits with code 1, having written nothing.
"""

import sys
from pathlib import Path
from typing import NoReturn

import click
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext

from portal.db import get_db
from portal.errors import PortalError
from portal.orgs import registry, tokens

orgs_cli = AppGroup("orgs", help="Create, list and delete hosted organizations.")
tokens_cli = AppGroup("tokens", help="Create, list and revoke API tokens of an organization.")


def orgs_dir() -> Path:
    """Folder of the hosted orgs' files for the current app."""
    return Path(current_app.instance_path) / current_app.config["ORGS_DIR"]


def fail(error: PortalError) -> NoReturn:
    """Print a refused input's reason and exit 1."""
    click.echo(f"Error: {error.message}", err=True)
    sys.exit(1)


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
    try:
        org = registry.create_org(get_db(), orgs_dir(), name, email=email, password=password,
                                  template=template, displayname=display_name)
    except PortalError as error:
        fail(error)
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
    try:
        registry.delete_org(get_db(), orgs_dir(), name)
    except PortalError as error:
        fail(error)
    click.echo(f"Deleted organization {name}")


@tokens_cli.command("create")
@click.argument("org")
@click.option("--email", required=True, help="E-mail of the org user the token acts as.")
def create_token(org: str, email: str) -> None:
    """Create an API token for an org user and print it (it is shown only once)."""
    try:
        token_id, token = tokens.create_token(get_db(), org, email)
    except PortalError as error:
        fail(error)
    click.echo(f"Token {token_id} for {email} in {org} (shown only once):")
    click.echo(token)


@tokens_cli.command("revoke")
@click.argument("org")
@click.argument("token_id", type=int)
def revoke_token(org: str, token_id: int) -> None:
    """Revoke an API token of an organization."""
    try:
        tokens.revoke_token(get_db(), org, token_id)
    except PortalError as error:
        fail(error)
    click.echo(f"Revoked token {token_id} of {org}")


@tokens_cli.command("list")
@click.argument("org")
def list_tokens(org: str) -> None:
    """List an organization's API tokens (ids and users, never the tokens)."""
    try:
        rows = tokens.list_tokens(get_db(), org)
    except PortalError as error:
        fail(error)
    if not rows:
        click.echo("No tokens.")
    for row in rows:
        state = f"revoked={row['revoked']}" if row["revoked"] else "active"
        click.echo(f"{row['id']:<6} {row['email']:<40} created={row['created']} {state}")


def init_app(app: Flask) -> None:
    """Register the commands on the app's CLI."""
    app.cli.add_command(init_db)
    app.cli.add_command(orgs_cli)
    app.cli.add_command(tokens_cli)
    from portal.cli import sync  # here, not on top: sync imports this module's helpers

    sync.init_app(app)
