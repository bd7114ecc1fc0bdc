"""`flask sync entities|filter|settings`: the settings the admin's screens change, for scripts.

Each command makes the same data-layer call as the screens and the web service; a
refused input prints its reason and exits 1 (PortalGroup), having changed nothing.
"""

from typing import IO

import click
from flask import current_app

from portal.cli.base import Refused
from portal.cli.sync import connection_of, sync_cli
from portal.db import get_db
from portal.errors import InvalidInput
from portal.orgs.store import open_org, orgs_path
from portal.sync import connections
from portal.sync.connections import Connection
from portal.sync.streams import MAX_STREAMS


def _show_entities(connection: Connection) -> None:
    for s in connections.entity_settings(get_db(), connection.id):
        click.echo(f"{s.entity:<32} {'enabled ' if s.enabled else 'disabled'}  "
                   f"sync deletion {'on ' if s.sync_deletion else 'off'}  "
                   f"{'filtered' if s.filter else ''}".rstrip())


@sync_cli.command("entities")
@click.argument("org")
@click.argument("names", nargs=-1)
@click.option("--enable/--disable", "enabled", default=None,
              help="Sync the named entities, or stop syncing them.")
@click.option("--sync-deletion/--no-sync-deletion", "sync_deletion", default=None,
              help="Bring the server's deletions of the named entities, or not.")
def entities(org: str, names: tuple[str, ...], enabled: bool | None,
             sync_deletion: bool | None) -> None:
    """List a connection's entities, or change the named ones' settings."""
    connection = connection_of(get_db(), org, connected=False)
    if enabled is not None or sync_deletion is not None:
        connections.configure_entities(get_db(), connection.id, list(names), enabled=enabled,
                                       sync_deletion=sync_deletion)
    elif names:
        raise InvalidInput("say what to change: --enable/--disable, "
                           "--sync-deletion/--no-sync-deletion")
    _show_entities(connection)


@sync_cli.command("filter")
@click.argument("org")
@click.argument("entity")
@click.option("--fetchxml", type=click.File("r"), default=None,
              help="A file with the FetchXML <filter> (or <fetch>); - reads stdin.")
@click.option("--clear", is_flag=True, help="Remove the entity's sync filter.")
def sync_filter(org: str, entity: str, fetchxml: IO[str] | None, clear: bool) -> None:
    """Show, set (--fetchxml FILE) or remove (--clear) an entity's sync filter."""
    if fetchxml is not None and clear:
        raise Refused("choose --fetchxml or --clear, not both")
    connection = connection_of(get_db(), org, connected=False)
    known = {s.entity: s for s in connections.entity_settings(get_db(), connection.id)}
    with open_org(orgs_path(current_app), org) as opened:
        definition = opened.entities().get(entity)
    if entity not in known or definition is None:
        raise InvalidInput(f"the server has no entity {entity!r} in this connection")
    if fetchxml is None and not clear:
        click.echo(known[entity].filter or f"{entity} has no sync filter.")
        return
    stored = connections.set_filter(get_db(), connection.id, definition,
                                    None if clear or fetchxml is None else fetchxml.read())
    click.echo(f"Sync filter of {org}.{entity}: {stored}" if stored else
               f"Sync filter of {org}.{entity} cleared: the next run brings all its records.")


@sync_cli.command("settings")
@click.argument("org")
@click.option("--write-mode", type=click.Choice(["instant", "offline"]), default=None,
              help="Send client changes to the server instantly, or at the next run.")
@click.option("--conflict-policy", type=click.Choice([str(p) for p in connections.ConflictPolicy]),
              default=None, help="Who wins when both sides changed a record.")
@click.option("--streams", default=None, metavar="N|default",
              help=f"Entities a run downloads at once, 1 to {MAX_STREAMS} (the backend may "
                   "allow fewer), or 'default' for the portal's SYNC_STREAMS.")
def settings(org: str, write_mode: str | None, conflict_policy: str | None,
             streams: str | None) -> None:
    """Show or change a connection's write mode, conflict policy and streams."""
    connection = connection_of(get_db(), org, connected=False)
    if write_mode is not None or conflict_policy is not None or streams is not None:
        connection = connections.update_settings(
            get_db(), connection.id,
            write_offline=None if write_mode is None else write_mode == "offline",
            conflict_policy=conflict_policy,
            streams=connections.Keep.KEEP if streams is None else
            None if streams.strip() == "default" else streams)
    click.echo(f"write mode: {'offline' if connection.write_offline else 'instant'}")
    click.echo(f"conflict policy: {connection.conflict_policy}")
    planned = connections.planned_streams(get_db(), connection,
                                          current_app.config["SYNC_STREAMS"])
    click.echo(f"streams: {planned.describe()}"
               f"{'' if connection.streams else ' (the portal default)'}")
