"""Connections in the registry: which server a client org syncs with, how, and when.

A connection belongs to one client org. Its server password (or client
secret) is kept encrypted (portal.crypto); how it signs in beyond that (for
Dynamics: user password or application user, tenant) is `server_options`;
its per-entity settings (enabled, Sync Deletion, sync filter) are rows of
`connection_entities`. Where each entity's download
stands is kept in the client org's own file (portal.orgs.sync_state).
"""

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum, StrEnum
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sqlite_utils import Database

from portal import crypto
from portal.backends.registry import (
    available_backend,
    check_options,
    secret_options,
    stream_limit,
)
from portal.db import TIMESTAMP_FORMAT, immediate, utcnow
from portal.errors import InvalidInput, NotFound
from portal.orgs.metadata import Entity
from portal.sync import filters
from portal.sync.streams import MAX_STREAMS, Streams, decide


class Keep(Enum):
    """An update's "leave this setting as it is" (None means clear it, for some)."""

    KEEP = 0


class ConnectionStatus(StrEnum):
    """Where a connection stands: waiting for its connect job, connecting, connected, failed."""

    PENDING = "pending"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    FAILED = "failed"


class ConflictPolicy(StrEnum):
    """Which version a conflict keeps: the server's, the client's, or the newer one."""

    SERVER_WINS = "server-wins"
    CLIENT_WINS = "client-wins"
    NEWEST_WINS = "newest-wins"


DAILY_RE = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")


@dataclass
class Connection:
    """A client org's connection to its server org (password not included)."""

    id: int
    org_id: int
    org_name: str
    backend: str
    url: str
    username: str
    status: ConnectionStatus
    error: str | None
    job_id: str | None
    progress: dict[str, Any]
    write_offline: bool
    conflict_policy: ConflictPolicy
    schedule_every_minutes: int | None
    schedule_daily_at: str | None
    schedule_active: bool
    next_run_at: str | None
    last_run_at: str | None
    created: str
    updated: str
    server_options: dict[str, str] = field(default_factory=dict)  # the backend's sign-in
    streams: int | None = None  # entities a run downloads at once; None: SYNC_STREAMS


@dataclass
class EntitySettings:
    """How one server entity syncs."""

    entity: str
    enabled: bool
    sync_deletion: bool
    filter: str | None


def check_url(url: Any) -> str:
    """Refuse a server URL that is not http(s)://host/... (address checks are the web's)."""
    if not isinstance(url, str) or not re.match(r"^https?://[^/\s]+(/\S*)?$", url.strip()):
        raise InvalidInput("the server URL must start with http:// or https:// and name a host",
                           field="url")
    return url.strip()


def check_policy(policy: str) -> ConflictPolicy:
    """The conflict policy of this name; InvalidInput for an unknown one."""
    try:
        return ConflictPolicy(policy)
    except ValueError:
        raise InvalidInput(f"unknown conflict policy {policy!r} "
                           f"(one of {', '.join(ConflictPolicy)})",
                           field="conflict_policy") from None


def check_streams(value: Any) -> int | None:
    """Streams asked for (1..MAX_STREAMS; a whole number or its text); None or '' is the
    portal's default. InvalidInput otherwise."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_STREAMS:
        raise InvalidInput(f"streams must be a whole number from 1 to {MAX_STREAMS}, or empty "
                           f"for the portal's default (not {value!r})", field="streams")
    return value


_SELECT = ("SELECT connections.*, orgs.name AS org_name FROM connections "
           "JOIN orgs ON orgs.id = connections.org_id")


def _from_row(row: dict[str, Any]) -> Connection:
    values = {k: row[k] for k in Connection.__dataclass_fields__}
    values["status"] = ConnectionStatus(row["status"])
    values["conflict_policy"] = ConflictPolicy(row["conflict_policy"])
    values["progress"] = json.loads(row["progress"] or "{}")
    values["server_options"] = json.loads(row.get("server_options") or "{}")
    values["write_offline"] = bool(row["write_offline"])
    values["schedule_active"] = bool(row["schedule_active"])
    return Connection(**values)


def create_connection(db: Database, key: bytes, org_id: int, *, backend: str, url: str,
                      username: str, password: str, write_offline: bool = True,
                      conflict_policy: str = ConflictPolicy.SERVER_WINS,
                      server_options: dict[str, str] | None = None) -> Connection:
    """Store a new connection of a client org, status pending."""
    kind = available_backend(backend)
    url = check_url(url)
    policy = check_policy(conflict_policy)
    options = _sealed(key, backend, check_options(backend, server_options))
    if not username:
        raise InvalidInput("enter the server user name", field="username")
    if not password:
        raise InvalidInput("enter the server password", field="password")
    now = utcnow()
    with immediate(db):
        if db.execute("SELECT 1 FROM connections WHERE org_id = ?", [org_id]).fetchone():
            raise InvalidInput("this organization is connected already", field="org")
        connection_id = db.table("connections").insert({
            "org_id": org_id, "backend": kind.key, "url": url, "username": username,
            "password_encrypted": crypto.encrypt(key, password),
            "status": ConnectionStatus.PENDING, "write_offline": int(write_offline),
            "conflict_policy": policy, "server_options": json.dumps(options),
            "created": now, "updated": now}).last_pk
    return get_connection(db, int(connection_id or 0))


def update_server(db: Database, key: bytes, connection_id: int, *, backend: str, url: str,
                  username: str, password: str,
                  server_options: dict[str, str] | None = None) -> Connection:
    """Change the server of a connection (to fix a failed connect); status back to pending."""
    kind = available_backend(backend)
    url = check_url(url)
    options = _sealed(key, backend, check_options(backend, server_options))
    with immediate(db):
        db.execute(
            "UPDATE connections SET backend = ?, url = ?, username = ?, password_encrypted = ?, "
            "server_options = ?, status = ?, error = NULL, updated = ? WHERE id = ?",
            [kind.key, url, username, crypto.encrypt(key, password), json.dumps(options),
             ConnectionStatus.PENDING,
             utcnow(), connection_id])
    return get_connection(db, connection_id)


def server_identity(backend: str, url: str) -> tuple[str, str]:
    """What names a server (and its org): the backend type and the URL, case-folded where
    URLs ignore case (scheme, host) and without a trailing slash."""
    parts = urlsplit(url.strip())
    path = parts.path.rstrip("/")
    return (available_backend(backend).key,
            urlunsplit((parts.scheme.lower(), parts.netloc.lower(), path, parts.query, "")))


def reset_entities(db: Database, connection_id: int) -> None:
    """Entity settings back to their defaults (enabled, Sync Deletion, no filter): a new server."""
    # The names stay: they tell the metadata copy which client entities were the old
    # server's, so those the new server lacks leave the client.
    with immediate(db):
        db.execute("UPDATE connection_entities SET enabled = 1, sync_deletion = 1, filter = NULL "
                   "WHERE connection_id = ?", [connection_id])


def change_credentials(db: Database, key: bytes, connection_id: int, *, username: str,
                       password: str) -> Connection:
    """Replace the server user name and password of a connection, keeping its state."""
    if not isinstance(username, str) or not username.strip():
        raise InvalidInput("enter the server user name", field="username")
    if len(username) > 254:
        raise InvalidInput("the server user name is longer than 254 characters",
                           field="username")
    if not isinstance(password, str) or not password:
        raise InvalidInput("enter the server password", field="password")
    with immediate(db):
        cursor = db.execute(
            "UPDATE connections SET username = ?, password_encrypted = ?, updated = ? "
            "WHERE id = ?",
            [username.strip(), crypto.encrypt(key, password), utcnow(), connection_id])
        if cursor.rowcount != 1:
            raise NotFound(f"connection {connection_id} does not exist")
    return get_connection(db, connection_id)


def delete_connection(db: Database, connection_id: int) -> None:
    """Remove a connection with its entity settings, runs and log (the org stays)."""
    with immediate(db):
        db.execute("DELETE FROM sync_logs WHERE run_id IN "
                   "(SELECT id FROM sync_runs WHERE connection_id = ?)", [connection_id])
        db.execute("DELETE FROM sync_runs WHERE connection_id = ?", [connection_id])
        db.execute("DELETE FROM connection_entities WHERE connection_id = ?", [connection_id])
        cursor = db.execute("DELETE FROM connections WHERE id = ?", [connection_id])
        if cursor.rowcount != 1:
            raise NotFound(f"connection {connection_id} does not exist")


def get_connection(db: Database, connection_id: int) -> Connection:
    """A connection by id; NotFound if there is none."""
    rows = list(db.query(_SELECT + " WHERE connections.id = ?", [connection_id]))
    if not rows:
        raise NotFound(f"connection {connection_id} does not exist")
    return _from_row(rows[0])


def connection_of_org(db: Database, org_name: str) -> Connection | None:
    """The connection whose client is this org, if any."""
    rows = list(db.query(_SELECT + " WHERE orgs.name = ?", [org_name]))
    return _from_row(rows[0]) if rows else None


def list_connections(db: Database) -> list[Connection]:
    """Every connection, by org name."""
    return [_from_row(r) for r in db.query(_SELECT + " ORDER BY orgs.name")]


def _sealed(key: bytes, backend: str, options: dict[str, str]) -> dict[str, str]:
    """Options with the backend's secret ones (e.g. a consumer secret) encrypted."""
    secret = secret_options(backend)
    return {k: crypto.encrypt(key, v) if k in secret else v for k, v in options.items()}


def backend_options(key: bytes, connection: Connection) -> dict[str, str]:
    """A connection's server options as its backend takes them: secret ones decrypted."""
    secret = secret_options(connection.backend)
    return {k: crypto.decrypt(key, v) if k in secret else v
            for k, v in connection.server_options.items()}


def server_password(db: Database, key: bytes, connection_id: int) -> str:
    """The decrypted server password of a connection."""
    row = db.execute("SELECT password_encrypted FROM connections WHERE id = ?",
                     [connection_id]).fetchone()
    if row is None:
        raise NotFound(f"connection {connection_id} does not exist")
    return crypto.decrypt(key, row[0])


def set_status(db: Database, connection_id: int, status: ConnectionStatus, *,
               error: str | None = None, job_id: str | None = None) -> None:
    """Record the connection's state (and the job working on it)."""
    if status not in set(ConnectionStatus):
        raise InvalidInput(f"unknown status {status!r}", field="status")
    with immediate(db):
        db.execute("UPDATE connections SET status = ?, error = ?, job_id = coalesce(?, job_id), "
                   "updated = ? WHERE id = ?", [status, error, job_id, utcnow(), connection_id])


def set_progress(db: Database, connection_id: int, progress: dict[str, Any]) -> None:
    """Record how far the current job is (step, entity, done, total)."""
    with immediate(db):
        db.execute("UPDATE connections SET progress = ?, updated = ? WHERE id = ?",
                   [json.dumps(progress), utcnow(), connection_id])


def update_settings(db: Database, connection_id: int, *, write_offline: bool | None = None,
                    conflict_policy: str | None = None,
                    streams: int | str | None | Keep = Keep.KEEP) -> Connection:
    """Change how client changes reach the server, how conflicts are resolved, and how many
    entities a run downloads at once (streams=None: the portal's default)."""
    if conflict_policy is not None:
        check_policy(conflict_policy)
    asked = None if isinstance(streams, Keep) else check_streams(streams)
    with immediate(db):
        if not isinstance(streams, Keep):
            db.execute("UPDATE connections SET streams = ? WHERE id = ?", [asked, connection_id])
        if write_offline is not None:
            db.execute("UPDATE connections SET write_offline = ? WHERE id = ?",
                       [int(write_offline), connection_id])
        if conflict_policy is not None:
            db.execute("UPDATE connections SET conflict_policy = ? WHERE id = ?",
                       [check_policy(conflict_policy), connection_id])
    return get_connection(db, connection_id)


def planned_streams(db: Database, connection: Connection, default: int) -> Streams:
    """The streams the connection's next run asks for and may use, as known before it starts
    (its setting or `default`, capped by the backend type and the enabled entities)."""
    enabled = sum(s.enabled for s in entity_settings(db, connection.id))
    limits = [stream_limit(connection.backend)]
    if enabled:
        limits.append((enabled, f"{enabled} {'entity is' if enabled == 1 else 'entities are'} "
                                "enabled"))
    return decide(connection.streams or default, limits)


# --- entities ----------------------------------------------------------------

def entity_settings(db: Database, connection_id: int) -> list[EntitySettings]:
    """The server entities of a connection with their settings, by name."""
    return [EntitySettings(r["entity"], bool(r["enabled"]), bool(r["sync_deletion"]), r["filter"])
            for r in db.query("SELECT * FROM connection_entities WHERE connection_id = ? "
                              "ORDER BY entity", [connection_id])]


def set_server_entities(db: Database, connection_id: int, names: list[str]) -> None:
    """Make the connection's entities the server's: new ones enabled, gone ones dropped."""
    with immediate(db):
        marks = ",".join("?" * len(names)) or "''"
        db.execute(f"DELETE FROM connection_entities WHERE connection_id = ? "
                   f"AND entity NOT IN ({marks})", [connection_id, *names])
        db.conn.executemany(
            "INSERT INTO connection_entities (connection_id, entity) VALUES (?, ?) "
            "ON CONFLICT DO NOTHING", [(connection_id, n) for n in names])


def configure_entities(db: Database, connection_id: int, entities: list[str], *,
                       enabled: bool | None = None,
                       sync_deletion: bool | None = None) -> int:
    """Turn syncing or Sync Deletion on or off for several entities at once; returns how many.

    Every name must be one of the connection's entities, else nothing changes.
    """
    if not entities:
        raise InvalidInput("choose at least one entity", field="entities")
    with immediate(db):
        known = {r[0] for r in db.execute(
            "SELECT entity FROM connection_entities WHERE connection_id = ?", [connection_id])}
        unknown = sorted(set(entities) - known)
        if unknown:
            raise InvalidInput(f"{unknown[0]!r} is not an entity of the server", field="entities")
        for name in sorted(set(entities)):
            configure_entity(db, connection_id, name, enabled=enabled,
                             sync_deletion=sync_deletion)
    return len(set(entities))


def configure_entity(db: Database, connection_id: int, entity: str, *,
                     enabled: bool | None = None, sync_deletion: bool | None = None,
                     filter_xml: str | None | bool = False) -> None:
    """Change one entity's settings; filter_xml=None clears the filter, False keeps it."""
    with immediate(db):
        if not db.execute("SELECT 1 FROM connection_entities WHERE connection_id = ? "
                          "AND entity = ?", [connection_id, entity]).fetchone():
            raise InvalidInput(f"{entity!r} is not an entity of the server", field="entity")
        if enabled is not None:
            db.execute("UPDATE connection_entities SET enabled = ? WHERE connection_id = ? "
                       "AND entity = ?", [int(enabled), connection_id, entity])
        if sync_deletion is not None:
            db.execute("UPDATE connection_entities SET sync_deletion = ? WHERE connection_id = ?"
                       " AND entity = ?", [int(sync_deletion), connection_id, entity])
        if filter_xml is not False:
            db.execute("UPDATE connection_entities SET filter = ? WHERE connection_id = ? "
                       "AND entity = ?", [filter_xml, connection_id, entity])


def set_filter(db: Database, connection_id: int, entity: Entity, xml: str | None) -> str | None:
    """Set an entity's sync filter from FetchXML (a <filter>, or a <fetch> naming the entity),
    checked against its metadata and stored canonical; None clears it. Returns what is stored.
    """
    if xml is None:
        configure_entity(db, connection_id, entity.logicalname, filter_xml=None)
        return None
    text = xml.strip() if isinstance(xml, str) else xml
    if isinstance(text, str) and text.startswith("<fetch"):
        found = filters.parse_fetch_filters(text)
        if entity.logicalname not in found:
            raise InvalidInput(f"the <fetch> has no filter of entity {entity.logicalname!r}",
                               field="filter")
        parsed = found[entity.logicalname]
    else:
        parsed = filters.parse_filter(text)
    canonical = parsed.check(entity).to_xml()
    configure_entity(db, connection_id, entity.logicalname, filter_xml=canonical)
    return canonical


# --- schedule ----------------------------------------------------------------

def parse_every(text: str) -> int:
    """'15m', '2h' or '30' (minutes) -> minutes; InvalidInput otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*([mh]?)\s*", text or "")
    if not match or int(match.group(1)) < 1:
        raise InvalidInput("the interval must be like 15m or 2h", field="every")
    minutes = int(match.group(1)) * (60 if match.group(2) == "h" else 1)
    if minutes > 7 * 24 * 60:
        raise InvalidInput("the interval must be at most a week", field="every")
    return minutes


def next_run(every_minutes: int | None, daily_at: str | None, after: datetime) -> str | None:
    """When a schedule next fires after `after` (UTC)."""
    if every_minutes:
        return (after + timedelta(minutes=every_minutes)).strftime(TIMESTAMP_FORMAT)
    if daily_at:
        hour, minute = (int(x) for x in daily_at.split(":"))
        at = after.replace(hour=hour, minute=minute, second=0, microsecond=0)
        if at <= after:
            at += timedelta(days=1)
        return at.strftime(TIMESTAMP_FORMAT)
    return None


def set_schedule(db: Database, connection_id: int, *, every_minutes: int | None = None,
                 daily_at: str | None = None, active: bool = True) -> Connection:
    """Set the sync job's schedule: every N minutes, or daily at HH:MM UTC; or turn it off."""
    if every_minutes is not None and daily_at is not None:
        raise InvalidInput("choose an interval or a daily time, not both", field="schedule")
    if daily_at is not None and not DAILY_RE.match(daily_at):
        raise InvalidInput("the daily time must be HH:MM (UTC)", field="daily_at")
    if active and every_minutes is None and daily_at is None:
        raise InvalidInput("an active schedule needs an interval or a daily time",
                           field="schedule")
    now = datetime.now(UTC)
    with immediate(db):
        db.execute(
            "UPDATE connections SET schedule_every_minutes = ?, schedule_daily_at = ?, "
            "schedule_active = ?, next_run_at = ?, updated = ? WHERE id = ?",
            [every_minutes, daily_at, int(active),
             next_run(every_minutes, daily_at, now) if active else None, utcnow(),
             connection_id])
    return get_connection(db, connection_id)


def due_connections(db: Database, now: datetime) -> list[Connection]:
    """Connected connections whose sync job is active and due."""
    return [_from_row(r) for r in db.query(
        _SELECT + " WHERE schedule_active = 1 AND status = ? AND next_run_at <= ? "
        "ORDER BY next_run_at", [ConnectionStatus.CONNECTED, now.strftime(TIMESTAMP_FORMAT)])]


def advance_schedule(db: Database, connection: Connection, now: datetime) -> bool:
    """Move a due connection's next run past now; False if someone else did it first."""
    with immediate(db):
        cursor = db.execute(
            "UPDATE connections SET next_run_at = ? WHERE id = ? AND next_run_at = ?",
            [next_run(connection.schedule_every_minutes, connection.schedule_daily_at, now),
             connection.id, connection.next_run_at])
        return cursor.rowcount == 1


def record_run_time(db: Database, connection_id: int) -> None:
    """Remember when the last run ended."""
    with immediate(db):
        db.execute("UPDATE connections SET last_run_at = ? WHERE id = ?",
                   [utcnow(), connection_id])
