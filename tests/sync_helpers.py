"""Helpers of the sync tests: two portals, orgs on them, a connection, and comparisons."""

import hashlib
import json
import random
import uuid
from pathlib import Path
from typing import Any

from flask import Flask
from redis import Redis
from rq import SimpleWorker
from rq.job import Job

from portal import create_app, crypto
from portal.db import get_db
from portal.orgs import records, registry, store
from portal.queue import enqueue_run
from portal.sync import connections, runs
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD

SYSTEM = {"versionnumber"}


class Side:
    """One portal's instance folder, its Flask app (for data-layer calls and jobs) and URL."""

    def __init__(self, instance: Path, redis_url: str, url: str | None = None,
                 config: dict[str, Any] | None = None, backend: str = "resco") -> None:
        self.instance = instance
        self.url = url
        self.redis_url = redis_url
        self.backend = backend  # the type of the connections this side makes
        # Every server in these tests is a portal on 127.0.0.1.
        self.app: Flask = create_app({"TESTING": True, "INSTANCE_PATH": instance,
                                      "REDIS_URL": redis_url, "ALLOW_PRIVATE_SERVERS": True,
                                      **(config or {})})

    @property
    def orgs_dir(self) -> Path:
        """The folder of this portal's org files."""
        return store.orgs_path(self.app)

    def create_org(self, name: str, template: str | None = "sales") -> None:
        """A hosted org with the standard admin."""
        with self.app.app_context():
            registry.create_org(get_db(), self.orgs_dir, name, email=ADMIN_EMAIL,
                                password=ADMIN_PASSWORD, template=template)

    def org(self, name: str) -> store.OrgDb:
        """Open an org of this portal (close it after use)."""
        return store.open_org(self.orgs_dir, name)

    def connect(self, client_org: str, server_url: str, *, policy: str = "server-wins",
                password: str = ADMIN_PASSWORD, username: str = ADMIN_EMAIL,
                options: dict[str, str] | None = None) -> int:
        """Store a connection of client_org to server_url; returns its id."""
        with self.app.app_context():
            db = get_db()
            org = registry.get_org(db, client_org)
            return connections.create_connection(
                db, crypto.load_key(self.instance), org["id"], backend=self.backend,
                url=server_url, username=username, password=password,
                conflict_policy=policy, server_options=options).id

    def connection(self, connection_id: int) -> connections.Connection:
        """The connection as the registry has it now."""
        with self.app.app_context():
            return connections.get_connection(get_db(), connection_id)

    def connect_now(self, redis: Redis, client_org: str, server_url: str, *,
                    policy: str = "server-wins", password: str = ADMIN_PASSWORD,
                    username: str = ADMIN_EMAIL, options: dict[str, str] | None = None) -> int:
        """Connect client_org to server_url and run the connect job; it must end connected."""
        connection_id = self.connect(client_org, server_url, policy=policy, password=password,
                                     username=username, options=options)
        self.queue(redis, connection_id, "connect")
        self.work(redis)
        connection = self.connection(connection_id)
        assert connection.status == "connected", connection.error
        return connection_id

    def sync_now(self, redis: Redis, connection_id: int) -> None:
        """Run one sync run of the connection on a worker."""
        self.queue(redis, connection_id, "sync")
        self.work(redis)

    def queue(self, redis: Redis, connection_id: int, kind: str, trigger: str = "cli") -> Job:
        """Ask for a run of the connection and enqueue its job, as the web and CLI do."""
        with self.app.app_context():
            db = get_db()
            connection = connections.get_connection(db, connection_id)
            run_id, _ = runs.request_run(db, connection_id, connection.org_id, kind, trigger)
            return enqueue_run(redis, kind, connection_id, run_id, trigger)

    def work(self, redis: Redis) -> None:
        """Run every queued job on a real RQ worker, in this process, until the queue is empty."""
        with self.app.app_context():
            SimpleWorker(["default"], connection=redis).work(burst=True)


def seed_sales(org: store.OrgDb, accounts: int, contacts_per_account: int = 1,
               seed: int = 7) -> None:
    """Accounts with contacts (lookups both ways), leads, competitors and N:N rows."""
    rnd = random.Random(seed)

    def gid() -> str:
        return str(uuid.UUID(int=rnd.getrandbits(128), version=4))

    account_rows, contact_rows = [], []
    for i in range(accounts):
        account_id = gid()
        contact_ids = [gid() for _ in range(contacts_per_account)]
        account_rows.append({"accountid": account_id, "name": f"Account {i}",
                             "numberofemployees": rnd.randint(1, 5000),
                             "revenue": round(rnd.random() * 1e6, 2),
                             "creditonhold": rnd.random() < 0.5, "industrycode": rnd.randint(1, 8),
                             "primarycontactid": contact_ids[0] if contact_ids else None,
                             "lastusedincampaign": "2026-03-04T05:06:07Z",
                             "description": "ľščťžýáíé " * rnd.randint(0, 3)})
        for n, contact_id in enumerate(contact_ids):
            contact_rows.append({"contactid": contact_id, "lastname": f"Last {i}-{n}",
                                 "firstname": f"First {n}", "parentcustomerid": account_id,
                                 "emailaddress1": f"c{i}-{n}@example.com"})
    records.save_records(org, "account", account_rows)
    records.save_records(org, "contact", contact_rows)
    leads = [{"leadid": gid(), "lastname": f"Lead {i}", "leadsourcecode": 8} for i in range(20)]
    competitors = [{"competitorid": gid(), "name": f"Competitor {i}"} for i in range(5)]
    records.save_records(org, "lead", leads)
    records.save_records(org, "competitor", competitors)
    records.save_records(org, "leadcompetitor", [
        {"leadcompetitorid": gid(), "leadid": lead["leadid"],
         "competitorid": competitors[i % 5]["competitorid"]} for i, lead in enumerate(leads)])


def snapshot(org: store.OrgDb, entities: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Every record of every (given) entity, by id, without local versions."""
    out: dict[str, dict[str, Any]] = {}
    for name, entity in org.entities().items():
        if entities is not None and name not in entities:
            continue
        pk = entity.primaryidattribute
        out[name] = {row[pk]: {k: v for k, v in row.items() if k not in SYSTEM}
                     for row in org.db.table(name).rows}
    return out


def assert_identical(server: store.OrgDb, client: store.OrgDb, entities: list[str]) -> None:
    """Both orgs hold the same records with the same values, entity by entity."""
    theirs, ours = snapshot(server, entities), snapshot(client, entities)
    for name in entities:
        differ = {i: (theirs[name].get(i), ours[name].get(i))
                  for i in set(theirs[name]) | set(ours[name])
                  if theirs[name].get(i) != ours[name].get(i)}
        assert not differ, f"{name}: {len(differ)} records differ (server, client): " \
                           f"{dict(list(differ.items())[:3])}"


def checksums(org: store.OrgDb, entities: list[str]) -> dict[str, str]:
    """A checksum of all attribute values of each entity."""
    data = snapshot(org, entities)
    return {name: hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
            for name, rows in data.items()}
