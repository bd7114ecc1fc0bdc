"""SQLite plumbing: connections with our pragmas, BEGIN IMMEDIATE, and the registry database.

The registry (instance/portal.db) holds what the portal knows about its orgs:
organizations, their users, and (added by later migrations) connections, runs,
logs. Each hosted org's own data lives in its own file (portal.orgs.store).
"""

import itertools
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from flask import Flask, current_app, g
from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

BUSY_TIMEOUT_S = 30
CACHE_KIB = 32 * 1024  # per connection; pages are held only once read


def connect(path: str | Path) -> Database:
    """Open a SQLite file with WAL, foreign keys and NORMAL sync; transactions are explicit."""
    # isolation_level=None: the sqlite3 module never opens transactions on its
    # own; immediate() and sqlite-utils' atomic() say where they begin and end.
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    # A bigger page cache than SQLite's 2 MB: records keyed by random GUIDs touch
    # index pages all over the file, and a page upsert re-reads them otherwise.
    conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    return Database(conn)


@contextmanager
def immediate(db: Database) -> Iterator[Database]:
    """Run a read-then-write transaction that takes the write lock at BEGIN.

    A deferred transaction that reads and then writes fails with "database is
    locked" under concurrent writers (measured: 900 of 1,200); IMMEDIATE waits
    for the lock instead. Nested inside another transaction it becomes a
    savepoint, so several writes can be made all-or-nothing by wrapping them.
    """
    if db.conn.in_transaction:
        name = f"sp{next(_savepoints)}"
        db.conn.execute(f"SAVEPOINT {name}")
        try:
            yield db
        except BaseException:
            if db.conn.in_transaction:
                db.conn.execute(f"ROLLBACK TO {name}")
                db.conn.execute(f"RELEASE {name}")
            raise
        db.conn.execute(f"RELEASE {name}")
        return
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        if db.conn.in_transaction:
            db.conn.execute("ROLLBACK")
        raise
    db.conn.execute("COMMIT")


_savepoints = itertools.count(1)


@contextmanager
def snapshot(db: Database) -> Iterator[Database]:
    """Run several reads against one consistent snapshot of the file."""
    db.conn.execute("BEGIN")
    try:
        yield db
    finally:
        if db.conn.in_transaction:
            db.conn.execute("COMMIT")


TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def ping(db: Database) -> None:
    """Raise if the database cannot answer a query (health checks)."""
    db.execute("SELECT 1").fetchone()


def utcnow() -> str:
    """Current UTC time as ISO 8601 to the second with a Z: the portal's one timestamp format.

    Seconds, as Dataverse stores them; fixed width, so text order is time order.
    """
    return datetime.now(UTC).strftime(TIMESTAMP_FORMAT)


# --- the registry database -------------------------------------------------

migrations = Migrations("portal")


@migrations()
def m001_orgs_and_users(db: Database) -> None:
    db.table("orgs").create(
        {"id": int, "name": str, "displayname": str, "template": str, "created": str},
        pk="id",
        not_null={"name", "displayname", "created"},
    )
    db.table("orgs").create_index(["name"], unique=True)
    db.table("org_users").create(
        {
            "id": int,
            "org_id": int,
            "email": str,
            "firstname": str,
            "lastname": str,
            "company": str,
            "jobtitle": str,
            "phone": str,
            "country": str,
            "password_hash": str,
            "is_admin": int,
            "created": str,
        },
        pk="id",
        foreign_keys=[("org_id", "orgs", "id")],
        not_null={"org_id", "email", "password_hash", "created"},
    )
    # E-mails compare case-insensitively, as people type them.
    db.execute("CREATE UNIQUE INDEX idx_org_users_email ON org_users (org_id, lower(email))")


@migrations()
def m002_api_tokens(db: Database) -> None:
    # Bearer tokens of the Org API: only a SHA-256 of the token is kept (it is
    # random and long, so a fast hash is enough); revoked tokens stay listed.
    # ON DELETE CASCADE: deleting an org's users takes their tokens along.
    db.execute("""
        CREATE TABLE api_tokens (
            id INTEGER PRIMARY KEY,
            org_id INTEGER NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
            user_id INTEGER NOT NULL REFERENCES org_users(id) ON DELETE CASCADE,
            token_hash TEXT NOT NULL,
            created TEXT NOT NULL,
            revoked TEXT
        )""")
    db.execute("CREATE UNIQUE INDEX idx_api_tokens_hash ON api_tokens (token_hash)")


@migrations()
def m003_connections_runs_logs(db: Database) -> None:
    # One connection per client org. Per-entity settings and checkpoints of the
    # data live in the client org's own file, so a page and its checkpoint
    # commit together; here are the connection's settings and state.
    db.execute("""
        CREATE TABLE connections (
            id INTEGER PRIMARY KEY,
            org_id INTEGER NOT NULL UNIQUE REFERENCES orgs(id) ON DELETE CASCADE,
            backend TEXT NOT NULL,
            url TEXT NOT NULL,
            username TEXT NOT NULL,
            password_encrypted TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending',
            error TEXT,
            job_id TEXT,
            progress TEXT,
            write_offline INTEGER NOT NULL DEFAULT 1,
            conflict_policy TEXT NOT NULL DEFAULT 'server-wins',
            schedule_every_minutes INTEGER,
            schedule_daily_at TEXT,
            schedule_active INTEGER NOT NULL DEFAULT 0,
            next_run_at TEXT,
            last_run_at TEXT,
            created TEXT NOT NULL,
            updated TEXT NOT NULL
        )""")
    # The server's entities this connection syncs, with their settings.
    db.execute("""
        CREATE TABLE connection_entities (
            connection_id INTEGER NOT NULL REFERENCES connections(id) ON DELETE CASCADE,
            entity TEXT NOT NULL,
            enabled INTEGER NOT NULL DEFAULT 1,
            sync_deletion INTEGER NOT NULL DEFAULT 1,
            filter TEXT,
            PRIMARY KEY (connection_id, entity)
        )""")
    db.execute("""
        CREATE TABLE sync_runs (
            id INTEGER PRIMARY KEY,
            connection_id INTEGER NOT NULL REFERENCES connections(id) ON DELETE CASCADE,
            org_id INTEGER NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
            kind TEXT NOT NULL,
            trigger TEXT NOT NULL,
            status TEXT NOT NULL,
            started TEXT NOT NULL,
            ended TEXT,
            duration_s REAL,
            counts TEXT,
            error TEXT,
            job_id TEXT
        )""")
    db.execute("CREATE INDEX idx_sync_runs_org ON sync_runs (org_id, id)")
    db.execute("""
        CREATE TABLE sync_logs (
            id INTEGER PRIMARY KEY,
            run_id INTEGER REFERENCES sync_runs(id) ON DELETE CASCADE,
            org_id INTEGER NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
            at TEXT NOT NULL,
            level TEXT NOT NULL,
            entity TEXT,
            message TEXT NOT NULL
        )""")
    db.execute("CREATE INDEX idx_sync_logs_org ON sync_logs (org_id, id)")


@migrations()
def m004_connection_requested_setup(db: Database) -> None:
    # What a ConnectAsync asked for beyond the server: the entities to sync and
    # their sync filters (JSON). Entities are known only once the connect job
    # has copied the server's metadata, so the request waits here until then.
    db.execute("ALTER TABLE connections ADD COLUMN requested_setup TEXT")


@migrations()
def m005_application_users(db: Database) -> None:
    # OAuth 2.0 clients of an org's Dataverse root (client credentials grant):
    # a client id, a SHA-256 of the secret (random and long, like API tokens),
    # revoked ones stay listed. Deleting an org takes its application users along.
    db.execute("""
        CREATE TABLE application_users (
            id INTEGER PRIMARY KEY,
            org_id INTEGER NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
            client_id TEXT NOT NULL,
            name TEXT NOT NULL,
            secret_hash TEXT NOT NULL,
            is_admin INTEGER NOT NULL DEFAULT 0,
            created TEXT NOT NULL,
            revoked TEXT
        )""")
    db.execute("CREATE UNIQUE INDEX idx_application_users_client ON application_users "
               "(client_id)")


@migrations()
def m006_connection_server_options(db: Database) -> None:
    # How a connection signs in beyond user name and password (JSON, no secrets:
    # the secret is the encrypted password): for Dynamics the sign-in kind
    # (user password or application user), tenant or authority, public client id.
    db.execute("ALTER TABLE connections ADD COLUMN server_options TEXT")


@migrations()
def m007_connection_streams(db: Database) -> None:
    # How many entities the connection's runs download at once (1..16); NULL is
    # the portal's SYNC_STREAMS. The backend may allow fewer (portal.sync.streams).
    db.execute("ALTER TABLE connections ADD COLUMN streams INTEGER")


def registry_path(app: Flask) -> Path:
    """Where this app's registry database lives."""
    return Path(app.instance_path) / app.config["DATABASE"]


def open_registry(path: str | Path) -> Database:
    """Open the registry database and bring its schema up to date."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = connect(path)
    if migrations.pending(db):
        # Under the write lock, so two processes starting at once migrate once.
        with immediate(db):
            migrations.apply(db)
    return db


def get_db() -> Database:
    """The registry database of this app context, opened on first use."""
    if "db" not in g:
        g.db = open_registry(registry_path(current_app))
    return g.db


def close_db(exc: BaseException | None = None) -> None:
    """Close the app context's registry connection."""
    db = g.pop("db", None)
    if db is not None:
        db.close()


def init_app(app: Flask) -> None:
    """Register teardown; the schema itself is migrated on first open."""
    app.teardown_appcontext(close_db)
