"""`flask transactions list/retry/archive`: a client org's offline transactions."""

import click
from flask import current_app

from portal.cli.base import Id, OneOf, PortalGroup
from portal.db import get_db
from portal.orgs import registry, transactions
from portal.orgs.store import open_org, orgs_path

transactions_cli = PortalGroup("transactions",
                               help="List, retry and archive a client org's offline transactions.")


@transactions_cli.command("list")
@click.argument("org")
@click.option("--status", "wanted", help="Only this status: pending, processed, error, archived.")
@click.option("--limit", default=100, show_default=True, help="How many to show.")
def list_transactions(org: str, wanted: str | None, limit: int) -> None:
    """List an org's offline transactions, oldest first."""
    registry.get_org(get_db(), org)
    with open_org(orgs_path(current_app), org) as opened:
        rows = transactions.list_transactions(opened, wanted, limit=limit)
    if not rows:
        click.echo("No transactions.")
        return
    click.echo(f"{'id':>6}  {'time':<20}  {'operation':<9}  {'entity':<20}  {'record id':<36}  "
               f"{'status':<9}  error")
    for t in rows:
        click.echo(f"{t.id:>6}  {t.created:<20}  {t.operation:<9}  {t.entity:<20}  "
                   f"{t.record_id:<36}  {t.status:<9}  {t.error or ''}")
    if len(rows) == limit:
        click.echo(f"(the first {limit} shown; see --limit)")


@transactions_cli.command("retry", one_of=OneOf(
    ("ids", "all_errors"), "name transaction ids or --all-errors",
    many="name transaction ids or --all-errors, not both"))
@click.argument("org")
@click.argument("ids", nargs=-1, type=Id("transaction"))
@click.option("--all-errors", is_flag=True, help="Every transaction in error.")
def retry_transactions(org: str, ids: tuple[int, ...], all_errors: bool) -> None:
    """Put transactions in error (or archived) back in the queue of the next sync."""
    registry.get_org(get_db(), org)
    with open_org(orgs_path(current_app), org) as opened:
        changed = transactions.set_all_pending(opened) if all_errors else \
            transactions.set_pending(opened, list(ids))
    click.echo(f"{changed} transaction(s) of {org} set to pending; the next sync uploads them.")
    if ids and changed < len(ids):
        click.echo(f"{len(ids) - changed} not changed: not in error or archived, "
                   "or no such transaction.")


@transactions_cli.command("archive")
@click.argument("org")
@click.argument("ids", nargs=-1, required=True, type=Id("transaction"))
def archive_transactions(org: str, ids: tuple[int, ...]) -> None:
    """Archive pending or error transactions so they are never uploaded."""
    registry.get_org(get_db(), org)
    with open_org(orgs_path(current_app), org) as opened:
        changed = transactions.set_archived(opened, list(ids))
    click.echo(f"{changed} transaction(s) of {org} archived.")
    if changed < len(ids):
        click.echo(f"{len(ids) - changed} not changed: not pending or in error, "
                   "or no such transaction.")
