"""Registering a connection: a new client org, its admin and its connection, all or nothing.

The connect page and the web service's ConnectAsync both end here, then
enqueue the one connect job. A ConnectAsync may also ask for the entities to
sync and their sync filters; those can only be checked against the server's
entities after the connect job has copied its metadata, so they are kept on
the connection (`requested_setup`) and applied by `apply_requested_setup`,
which the connect and update-metadata jobs call right after copying metadata.
"""

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from sqlite_utils import Database

from portal.backends.registry import available_backend
from portal.backends.server_urls import Resolver, check_server_url, resolve
from portal.db import immediate
from portal.errors import InvalidInput, NotFound
from portal.orgs import registry, store, sync_state, transactions
from portal.orgs.metadata import NAME_RE, Entity
from portal.orgs.store import OrgDb
from portal.sync import connections, filters, runs
from portal.sync.connections import Connection, ConnectionStatus

MAX_ENTITIES = 1000


@dataclass
class Registration:
    """What the connect page and ConnectAsync collect: the new client org and its server."""

    org: str
    email: str
    password: str
    backend: str
    url: str
    username: str
    server_password: str
    firstname: str | None = None
    lastname: str | None = None
    company: str | None = None
    jobtitle: str | None = None
    phone: str | None = None
    country: str | None = None
    server_options: dict[str, str] = field(default_factory=dict)  # e.g. Dynamics' sign-in


@dataclass
class RequestedSetup:
    """Entities to sync (None: all the server has) and sync filters (entity -> <filter> XML)."""

    entities: list[str] | None = None
    filters: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.entities is not None or bool(self.filters)


def parse_setup(entities: list[str] | None, fetch_xml: str | None) -> RequestedSetup:
    """Check requested entity names and a FetchXML `<fetch>` of sync filters (syntax only)."""
    names: list[str] | None = None
    if entities is not None:
        if not entities:
            raise InvalidInput("name at least one entity, or leave the list out to sync all",
                               field="entities")
        if len(entities) > MAX_ENTITIES:
            raise InvalidInput(f"more than {MAX_ENTITIES} entities", field="entities")
        for name in entities:
            if not isinstance(name, str) or not NAME_RE.match(name):
                raise InvalidInput(f"{name!r} is not an entity logical name", field="entities")
        names = sorted(set(entities))
    parsed = filters.parse_fetch_filters(fetch_xml) if fetch_xml else {}
    if names is not None:
        for entity in parsed:
            if entity not in names:
                raise InvalidInput(f"the sync filter names the entity {entity!r}, which is not "
                                   "in the requested entities", field="filter")
    return RequestedSetup(names, {name: f.to_xml() for name, f in sorted(parsed.items())})


def register_connection(db: Database, orgs_dir: str | Path, key: bytes, registration: Registration,
                        *, allow_private: bool, setup: RequestedSetup | None = None,
                        resolver: Resolver = resolve) -> Connection:
    """Create the client org, its admin user and its connection (pending) in one transaction."""
    available_backend(registration.backend)
    # The address is checked before anything is written: a refused URL leaves nothing.
    url = check_server_url(registration.url, allow_private=allow_private, resolver=resolver)
    created = False
    try:
        # create_org and create_connection each open immediate(); nested in this
        # one they are savepoints, so both commit together or not at all.
        with immediate(db):
            org = registry.create_org(
                db, orgs_dir, registration.org, email=registration.email,
                password=registration.password, firstname=registration.firstname,
                lastname=registration.lastname, company=registration.company,
                jobtitle=registration.jobtitle, phone=registration.phone,
                country=registration.country)
            created = True
            connection = connections.create_connection(
                db, key, org["id"], backend=registration.backend, url=url,
                username=registration.username, password=registration.server_password,
                server_options=registration.server_options)
            if setup:
                store_requested_setup(db, connection.id, setup)
    except BaseException:
        if created:  # the org file was made for this registration: it goes with the rows
            store.remove_org_file(orgs_dir, registration.org)
        raise
    return connection


def store_requested_setup(db: Database, connection_id: int, setup: RequestedSetup | None) -> None:
    """Keep requested entities and filters on the connection until its entities are known."""
    value = json.dumps(asdict(setup)) if setup else None
    with immediate(db):
        db.execute("UPDATE connections SET requested_setup = ? WHERE id = ?",
                   [value, connection_id])


def requested_setup(db: Database, connection_id: int) -> RequestedSetup | None:
    """The entities and filters a ConnectAsync asked for and no job has applied yet."""
    row = db.execute("SELECT requested_setup FROM connections WHERE id = ?",
                     [connection_id]).fetchone()
    if not row or not row[0]:
        return None
    value = json.loads(row[0])
    return RequestedSetup(value.get("entities"), value.get("filters") or {})


def apply_setup(db: Database, connection_id: int, setup: RequestedSetup,
                entities: Mapping[str, Entity]) -> list[str]:
    """Enable only the requested entities and set their filters; returns lines for the log.

    `entities` is the client org's metadata (the server's copy): every name
    must be one of the connection's entities and every filter must fit its
    entity, else InvalidInput and nothing changes.
    """
    known = {s.entity for s in connections.entity_settings(db, connection_id)}
    wanted = setup.entities if setup.entities is not None else sorted(known)
    for name in [*wanted, *setup.filters]:
        if name not in known or name not in entities:
            raise InvalidInput(f"the server has no entity {name!r}",
                               field="filter" if name in setup.filters else "entities")
    checked = {name: filters.parse_filter(xml).check(entities[name]).to_xml()
               for name, xml in setup.filters.items()}
    lines = []
    with immediate(db):
        if setup.entities is not None:
            for name in sorted(known):
                connections.configure_entity(db, connection_id, name,
                                             enabled=name in setup.entities)
            lines.append(f"entities to sync, as requested: {', '.join(setup.entities)}")
        for name, xml in checked.items():
            connections.configure_entity(db, connection_id, name, filter_xml=xml)
            lines.append(f"sync filter set, as requested: {xml}")
    return lines


def apply_requested_setup(db: Database, connection_id: int,
                          entities: Mapping[str, Entity]) -> list[str]:
    """Apply (once) what a ConnectAsync requested; the connect job calls it after copying metadata.

    Returns lines for the run's log; raises InvalidInput (with the request
    kept) when a requested entity or filter does not fit the server's metadata.
    """
    setup = requested_setup(db, connection_id)
    if setup is None:
        return []
    with immediate(db):
        lines = apply_setup(db, connection_id, setup, entities)
        store_requested_setup(db, connection_id, None)
    return lines


def update_connected(db: Database, orgs_dir: str | Path, connection: Connection,
                     setup: RequestedSetup) -> list[str]:
    """Apply requested entities and filters to a connected org now (its entities are known)."""
    with store.open_org(orgs_dir, connection.org_name) as org:
        return apply_setup(db, connection.id, setup, org.entities())


def connect_existing(db: Database, key: bytes, org_id: int, *, backend: str, url: str,
                     username: str, password: str, allow_private: bool,
                     setup: RequestedSetup | None = None, resolver: Resolver = resolve,
                     server_options: dict[str, str] | None = None) -> Connection:
    """Connect an existing hosted org (no connection yet) to a server, with its requests."""
    available_backend(backend)
    url = check_server_url(url, allow_private=allow_private, resolver=resolver)
    with immediate(db):
        connection = connections.create_connection(db, key, org_id, backend=backend, url=url,
                                                   username=username, password=password,
                                                   server_options=server_options)
        if setup:
            store_requested_setup(db, connection.id, setup)
    return connection


def reconnect(db: Database, orgs_dir: str | Path, key: bytes, connection: Connection, *,
              backend: str, url: str, username: str, password: str, allow_private: bool,
              setup: RequestedSetup | None = None, resolver: Resolver = resolve,
              server_options: dict[str, str] | None = None) -> Connection:
    """Point a pending or failed connection at (corrected) server values, with its requests.

    The one place a connection is pointed at a server again. The same server
    (backend type and URL) resumes: the next connect goes on from the last
    committed page. Another server starts fresh: what the client holds of the
    old one (its records, server versions and keys, checkpoints and delta
    links, entity settings) is dropped before the connection names the new one,
    and open offline transactions of the old server's records are archived.
    """
    kind = available_backend(backend)
    url = check_server_url(url, allow_private=allow_private, resolver=resolver)
    if not username:
        raise InvalidInput("enter the server user name", field="username")
    if not password:
        raise InvalidInput("enter the server password", field="password")
    # The registry's write lock is held throughout: no job can start on the
    # connection in between (a job records its run, and re-reads the connection,
    # after taking the connection's lock).
    with immediate(db):
        current = connections.get_connection(db, connection.id)
        if current.status == ConnectionStatus.CONNECTING or \
                runs.running_run(db, connection.id) is not None:
            raise InvalidInput("a job is working on this connection: wait until it has ended",
                               field="connection")
        if connections.server_identity(current.backend, current.url) != \
                connections.server_identity(kind.key, url):
            # Two files, two commits: the client's is first. Killed between them, the
            # connection still names the old server and the client starts that one
            # afresh: nothing of one server is ever followed on another.
            with store.open_org(orgs_dir, current.org_name) as org:
                sync_state.forget_server(org, f"the connection moved from {current.url} to "
                                              f"{url}: this record was the old server's")
            connections.reset_entities(db, connection.id)
        updated = connections.update_server(db, key, connection.id, backend=kind.key, url=url,
                                            username=username, password=password,
                                            server_options=server_options)
        store_requested_setup(db, connection.id, setup)
    return updated


# --- ConnectAsync: what a ConnectRequest does to an org, by where the org stands ---

@dataclass
class ServerValues:
    """The server a ConnectRequest names: backend type, URL, user name and password."""

    backend: str
    url: str
    username: str
    password: str
    options: dict[str, str] = field(default_factory=dict)  # the backend's sign-in options


class ConnectAsk(Protocol):
    """A ConnectRequest's values, read as the decision needs them (a read refuses if missing)."""

    def server(self) -> ServerValues:
        """The server values; refused when one is missing."""

    def registration_of(self, org: str) -> Registration:
        """The new org's admin and its server; refused when RegistrationInfo lacks a value."""


class ConnectAction(StrEnum):
    """What a ConnectRequest does, by where the org stands; each names the job to enqueue."""

    CREATE = "create"  # a new org, its admin and connection: the connect job
    CONNECT = "connect"  # an existing org without a connection: the connect job
    UPDATE_METADATA = "update-metadata"  # a connected org: Update Client Metadata
    RECONNECT = "reconnect"  # a pending or failed connection, new values: connect again
    BUSY = "busy"  # its connect job is running: nothing changes


@dataclass
class ConnectDecision:
    """What a ConnectRequest did: the action, the connection, and a line for the caller."""

    action: ConnectAction
    connection: Connection
    message: str


def connect_request(db: Database, orgs_dir: str | Path, key: bytes, org: str, ask: ConnectAsk,
                    setup: RequestedSetup, *, authorize: Callable[[], object],
                    allow_private: bool, resolver: Resolver = resolve) -> ConnectDecision:
    """Decide and do what Resco's ConnectAsync does for this org; the caller enqueues the job.

    A new org is created with its admin and connection; an existing org's
    admin (`authorize` refuses anyone else, before anything changes) connects
    it, connects it again when pending or failed, or, when connected, updates
    its metadata with the requested entities and filters applied now.
    """
    try:
        existing = registry.get_org(db, org)
    except NotFound:
        registry.check_org_name(org)
        connection = register_connection(db, orgs_dir, key, ask.registration_of(org),
                                         allow_private=allow_private, setup=setup,
                                         resolver=resolver)
        return ConnectDecision(ConnectAction.CREATE, connection,
                               f"organization {org} created; connecting it to the server")
    authorize()
    found = connections.connection_of_org(db, org)
    if found is None:
        server = ask.server()
        connection = connect_existing(
            db, key, existing["id"], backend=server.backend, url=server.url,
            username=server.username, password=server.password, allow_private=allow_private,
            setup=setup, resolver=resolver, server_options=server.options)
        return ConnectDecision(ConnectAction.CONNECT, connection,
                               f"connecting the existing organization {org} to the server")
    if found.status == ConnectionStatus.CONNECTED:
        # Resco: a ConnectRequest for a connected org updates its metadata. The
        # server stays as it is; requested entities and filters apply now.
        applied = update_connected(db, orgs_dir, found, setup) if setup else []
        return ConnectDecision(ConnectAction.UPDATE_METADATA, found, "; ".join(
            [f"{org} is connected: updating its metadata from the server", *applied]))
    if found.status == ConnectionStatus.CONNECTING:
        return ConnectDecision(ConnectAction.BUSY, found, f"{org} is being connected right now")
    server = ask.server()  # pending or failed: connect again with the values sent
    connection = reconnect(db, orgs_dir, key, found, backend=server.backend, url=server.url,
                           username=server.username, password=server.password,
                           allow_private=allow_private, setup=setup, resolver=resolver,
                           server_options=server.options)
    return ConnectDecision(ConnectAction.RECONNECT, connection,
                           f"connecting {org} to the server again")


def disconnect(db: Database, org: OrgDb, connection_id: int, *,
               archive_open: bool = False) -> int:
    """End a connection: the org keeps its entities and records and stops recording changes.

    Refused while a job works on the connection (its run record says running),
    and while changes are not on the server yet (pending or in error) unless
    `archive_open`: then they are archived, so that connecting the org to a
    server later never uploads them there. Returns how many were archived.
    """
    if runs.running_run(db, connection_id) is not None:
        raise InvalidInput("a job is working on this connection: wait until it has ended",
                           field="connection")
    unsent = sum(transactions.counts(org)[s] for s in transactions.OPEN)
    if unsent and not archive_open:
        raise InvalidInput(
            f"changes of this organization not on the server yet (pending or in error): {unsent}; "
            "upload them first (Sync All), or confirm that they are archived",
            field="archive_open")
    archived = transactions.archive_open(org) if unsent else 0
    connections.delete_connection(db, connection_id)
    transactions.set_client(org, False)
    return archived
