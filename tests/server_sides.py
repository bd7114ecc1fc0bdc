"""The server side of a sync test: a server that is not a hosted org, seen the way a test needs.

A `ServerSide` seeds records, snapshots an entity as {server key: fields},
creates, updates and deletes one record, and lists its entities, all through
the server's own API (never through the backend under test). The client org is
compared with it by `client_snapshot`: each client record under the server key
the client's sync state maps it to, its attributes under the server's field
names. Implementations: `ODataSide` (any OData v4 service over HTTP: odatapy,
SAP CAP) and `HostedSide` (a hosted org of portal A, for comparison).

Each side describes its entities with `EntitySpec`s: the client's logical name,
the server's entity set, key and fields (server name -> client attribute) and
how values compare (enums by value, GUIDs in lower case, date-times to the
second). Adding a server (Salesforce) is one more class with these methods and
one more entry in `tests/test_sync_servers.py`'s params.
"""

import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import orjson
import requests

from portal.orgs import store
from portal.orgs.sync_state import key_text
from tests.portal_process import _die_with_parent, free_port

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class EntitySpec:
    """One entity of a server as a test sees it."""

    name: str  # the client's logical name
    entity_set: str  # the server's name of it
    key: str  # the server's key property (one)
    key_kind: str  # "guid" (the record id), "value" (the client gives it) or "server"
    fields: dict[str, str]  # server property -> the client's attribute
    enums: dict[str, dict[str, int]] = field(default_factory=dict)  # server property -> members
    # Server property -> the client entity it points to, where its values are server keys
    # (the client holds GUIDs: compared under the target's server keys).
    lookups: dict[str, str] = field(default_factory=dict)
    # A composite key's properties in key order (`key` is then the first of them).
    key_parts: tuple[str, ...] = ()
    # Lookups to composite keys: client attribute -> (the target entity, own server
    # property -> the target's key property); compared as the target's server key.
    composite_lookups: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)

    def key_of(self, item: dict[str, Any]) -> str:
        """A server record's key as the client's sync state keeps it (`sync_state.key_text`)."""
        if self.key_parts:
            return key_text({p: item[p] for p in self.key_parts})
        return str(item[self.key]).lower() if self.key_kind == "guid" else str(item[self.key])

    def values_of(self, item: dict[str, Any]) -> dict[str, Any]:
        """A server record's fields as compared (composite lookups as their targets' keys)."""
        values = {s: comparable(self, s, item.get(s)) for s in self.fields}
        for name, (_, props) in self.composite_lookups.items():
            parts = {theirs: item.get(own) for own, theirs in props.items()}
            values[name] = None if None in parts.values() else key_text(parts)
        return values


@dataclass(frozen=True)
class Roles:
    """Which of a side's entities and fields play parent and child in generic scenarios."""

    parent: str  # client logical name of an account-like entity
    parent_name: str  # its server name field
    child: str  # an entity with a lookup to the parent
    child_name: str
    child_parent: str  # the child's server lookup field


class ServerSide(Protocol):
    """What a sync test does with the server (see the module docstring)."""

    kind: str  # the backend type the client connects with
    url: str
    username: str
    password: str
    options: dict[str, str]  # the connection's server options
    specs: dict[str, EntitySpec]  # by the client's logical name

    def entities(self) -> list[str]:
        """The client logical names of the entities the server has (in the server's order)."""

    def seed(self, accounts: int, contacts_per_account: int = 1) -> None:
        """Records to start with: accounts, contacts pointing at them, and others."""

    def snapshot(self, entity: str) -> dict[str, dict[str, Any]]:
        """Every record of the entity: server key -> {server field: comparable value}."""

    def create(self, entity: str, fields: dict[str, Any]) -> str:
        """A new record (server field names); returns its server key."""

    def update(self, entity: str, key: str, fields: dict[str, Any]) -> None:
        """Change fields of one record."""

    def delete(self, entity: str, key: str) -> None:
        """Delete one record."""


def comparable(spec: EntitySpec, name: str, value: Any) -> Any:
    """A field's value in the one form both sides are compared in."""
    if value is None:
        return None
    if name in spec.enums and isinstance(value, str):
        return spec.enums[name].get(value, value)
    if isinstance(value, str) and len(value) == 36 and value.count("-") == 4:
        return value.lower()
    if isinstance(value, str) and len(value) >= 20 and value[10:11] == "T":
        return value[:19] + "Z"  # date-times to the second, as the client keeps them
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def client_snapshot(org: store.OrgDb, spec: EntitySpec) -> dict[str, dict[str, Any]]:
    """The client org's records of an entity as the server would list them (by server key)."""
    entity = org.entity(spec.name)
    pk = entity.primaryidattribute
    keys = _server_keys(org, spec.name)
    targets = {t: _server_keys(org, t) for t in [*spec.lookups.values(),
                                                  *(t for t, _ in spec.composite_lookups.values())]}
    out: dict[str, dict[str, Any]] = {}
    for row in org.db.table(spec.name).rows:
        key = row[pk] if spec.key_kind == "guid" else (keys.get(row[pk]) or f"?{row[pk]}")
        values = {s: row.get(c) for s, c in spec.fields.items()}
        for s, target in spec.lookups.items():
            if values.get(s) is not None:
                values[s] = targets[target].get(values[s]) or f"?{values[s]}"
        out[str(key)] = {s: comparable(spec, s, v) for s, v in values.items()}
        for name, (target, _) in spec.composite_lookups.items():
            value = row.get(name)
            out[str(key)][name] = None if value is None else (
                targets[target].get(value) or f"?{value}")
    return out


def _server_keys(org: store.OrgDb, entity: str) -> dict[str, str]:
    return dict(org.db.execute("SELECT id, server_key FROM _server_versions WHERE entity = ?",
                               [entity]).fetchall())


def assert_same(side: ServerSide, org: store.OrgDb, entities: list[str] | None = None) -> None:
    """The server and the client org hold the same records with the same values."""
    for name in entities or list(side.specs):
        spec = side.specs[name]
        theirs, ours = side.snapshot(name), client_snapshot(org, spec)
        differ = {k: (theirs.get(k), ours.get(k)) for k in set(theirs) | set(ours)
                  if theirs.get(k) != ours.get(k)}
        assert not differ, f"{name}: {len(differ)} records differ (server, client): " \
                           f"{dict(list(differ.items())[:3])}"


class ODataSide:
    """An OData v4 service over plain HTTP (requests), with Basic auth."""

    kind = "odata"

    def __init__(self, url: str, username: str, password: str, specs: list[EntitySpec],
                 options: dict[str, str] | None = None) -> None:
        self.url = url.rstrip("/") + "/"
        self.username, self.password = username, password
        self.options = options or {}
        self.specs = {s.name: s for s in specs}
        self.http = requests.Session()
        self.http.auth = (username, password)
        self.http.headers.update({"Accept": "application/json", "OData-MaxVersion": "4.0"})

    def entities(self) -> list[str]:
        """The specs' entities, in the order given."""
        return list(self.specs)

    def _path(self, spec: EntitySpec, key: str) -> str:
        if spec.key_parts:
            parts = orjson.loads(key)
            predicate = ",".join(f"{p}={v}" if isinstance(v, int) else
                                 f"{p}='{str(v).replace(chr(39), chr(39) * 2)}'"
                                 for p, v in parts.items())
            return f"{self.url}{spec.entity_set}({quote(predicate, safe=chr(39) + '=,-')})"
        literal = key if spec.key_kind == "guid" or key.lstrip("-").isdigit() else \
            "'" + key.replace("'", "''") + "'"
        return f"{self.url}{spec.entity_set}({quote(literal, safe=chr(39) + '-')})"

    def _check(self, response: requests.Response) -> requests.Response:
        assert response.status_code < 300, f"{response.request.method} {response.url}: " \
                                           f"{response.status_code} {response.text[:300]}"
        return response

    def _etag(self, spec: EntitySpec, key: str) -> str:
        return str(self._check(self.http.get(self._path(spec, key))).json().get(
            "@odata.etag") or "*")

    def snapshot(self, entity: str) -> dict[str, dict[str, Any]]:
        """Every record, following next links."""
        spec = self.specs[entity]
        out: dict[str, dict[str, Any]] = {}
        url: str | None = f"{self.url}{spec.entity_set}"
        while url:
            payload = self._check(self.http.get(url)).json()
            for item in payload["value"]:
                out[spec.key_of(item)] = spec.values_of(item)
            link = payload.get("@odata.nextLink")
            url = requests.compat.urljoin(self.url, link) if link else None
        return out

    def create(self, entity: str, fields: dict[str, Any]) -> str:
        """POST; the key from the answer."""
        spec = self.specs[entity]
        body = dict(fields)
        if spec.key_kind == "guid":
            body.setdefault(spec.key, str(uuid.uuid4()))
        answer = self._check(self.http.post(f"{self.url}{spec.entity_set}", json=body)).json()
        return spec.key_of(answer)

    def update(self, entity: str, key: str, fields: dict[str, Any]) -> None:
        """PATCH with the record's ETag."""
        spec = self.specs[entity]
        self._check(self.http.patch(self._path(spec, key), json=fields,
                                    headers={"If-Match": self._etag(spec, key)}))

    def delete(self, entity: str, key: str) -> None:
        """DELETE with the record's ETag."""
        spec = self.specs[entity]
        self._check(self.http.delete(self._path(spec, key),
                                     headers={"If-Match": self._etag(spec, key)}))

    # What a test creates on the client, per model: a record of a client-chosen key
    # (entity, client attributes, its server key) and an entity whose keys the server
    # picks (entity, a text attribute), if the model has one.
    value_keyed: tuple[str, dict[str, Any], str] = ("", {}, "")
    server_keyed: tuple[str, str] | None = None
    # A lookup to the value-keyed entity: (entity, its server lookup field, the server
    # fields of a record made on the server, the client attributes of one made on the
    # client).
    keyed_lookup: tuple[str, str, dict[str, Any], dict[str, Any]] = ("", "", {}, {})

    def contact_fields(self, i: int, n: int, account: str) -> dict[str, Any]:
        """A seeded contact of account `account`."""
        return {"lastName": f"Last {i}-{n}", "account_ID": account}

    def seed(self, accounts: int, contacts_per_account: int = 1) -> None:
        """Accounts, each with contacts, by single POSTs (what the model has: see the specs)."""
        for i in range(accounts):
            account = self.create("accounts", {"name": f"Account {i}", "employees": i * 7})
            for n in range(contacts_per_account):
                self.create("contacts", self.contact_fields(i, n, account))

    def create_at_one_time(self, entity: str, records: list[dict[str, Any]]) -> None:
        """Records that all get one modified timestamp (the side's own way to make that)."""
        raise NotImplementedError


# A composite key (both servers' models): Periods(year, code), and Budgets (a GUID
# key) whose lookup `period` is the foreign keys period_year and period_code.
COMPOSITE_SPECS = [
    EntitySpec("periods", "Periods", "year", "value", {"year": "year", "code": "code",
                                                       "name": "name"},
               key_parts=("year", "code")),
    EntitySpec("budgets", "Budgets", "ID", "guid", {"name": "name", "amount": "amount"},
               composite_lookups={"period": ("periods", {"period_year": "year",
                                                          "period_code": "code"})}),
]

# --- odatapy (tests/odatapy_server.py) ----------------------------------------

ODATAPY_SPECS = [
    EntitySpec("accounts", "Accounts", "ID", "guid",
               {"name": "name", "employees": "employees", "revenue": "revenue", "vip": "vip"}),
    EntitySpec("contacts", "Contacts", "ID", "guid",
               {"lastName": "lastname", "account_ID": "account_id", "priority": "priority"},
               enums={"priority": {"low": 1, "normal": 2, "high": 3}}),
    EntitySpec("tickets", "Tickets", "number", "server",
               {"number": "number", "title": "title", "account_ID": "account_id",
                "country_code": "country_code"}, lookups={"country_code": "countries"}),
    EntitySpec("countries", "Countries", "code", "value", {"code": "code", "name": "name"}),
    *COMPOSITE_SPECS,
]


class OdatapySide(ODataSide):
    """odatapy's in-memory service (a subprocess), with its clock control for modifiedAt."""

    roles = Roles("accounts", "name", "contacts", "lastName", "account_ID")
    value_keyed = ("countries", {"code": "CZ", "name": "Czechia"}, "CZ")
    server_keyed = ("tickets", "title")
    keyed_lookup = ("tickets", "country_code", {"title": "Server ticket"},
                    {"title": "Client ticket"})

    def __init__(self, url: str, process: subprocess.Popen[bytes], tracked: bool) -> None:
        from tests.odatapy_server import PASSWORD, USER

        # The client-id property named both ways the option takes: for every set
        # (tracked) and for Tickets alone (watermark).
        super().__init__(url, USER, PASSWORD, ODATAPY_SPECS, options={
            "client_id_property": "clientId" if tracked else "Tickets=clientId"})
        self.process = process
        self.tracked = tracked
        self.json_batch = True  # False: the server refuses JSON $batch (multipart only)

    def contact_fields(self, i: int, n: int, account: str) -> dict[str, Any]:
        """A contact with a priority (an enum)."""
        return {**super().contact_fields(i, n, account),
                "priority": ["low", "normal", "high"][(i + n) % 3]}

    def freeze_clock(self, stamp: str | None) -> None:
        """Every change from now on gets this modifiedAt (None: the real time again)."""
        self._check(self.http.post(f"{self.url}_clock", data=stamp or ""))

    def create_at_one_time(self, entity: str, records: list[dict[str, Any]]) -> None:
        """With the clock frozen."""
        self.freeze_clock("2026-12-01T10:00:00.000+00:00")
        try:
            for record in records:
                self.create(entity, record)
        finally:
            self.freeze_clock(None)


# --- SAP CAP (tests/cap, tests/cap_server.py) ------------------------------------------

CAP_SPECS = [
    EntitySpec("accounts", "Accounts", "ID", "guid",
               {"name": "name", "employees": "employees", "revenue": "revenue",
                "active": "active", "rating": "rating", "lastContactAt": "lastcontactat"}),
    EntitySpec("contacts", "Contacts", "ID", "guid",
               {"firstName": "firstname", "lastName": "lastname", "email": "email",
                "account_ID": "account_id"}),
    EntitySpec("products", "Products", "ID", "value",
               {"ID": "id", "name": "name", "price": "price", "currency_code": "currency_code"},
               lookups={"currency_code": "currencies"}),
    EntitySpec("currencies", "Currencies", "code", "value",
               {"code": "code", "name": "name", "symbol": "symbol"}),
    *COMPOSITE_SPECS,
]


class CapSide(ODataSide):
    """A real SAP CAP server (tests/cap_server.py): no delta links, a modifiedAt watermark."""

    roles = Roles("accounts", "name", "contacts", "lastName", "account_ID")
    value_keyed = ("currencies", {"code": "CZK", "name": "Koruna"}, "CZK")
    server_keyed = None  # CAP has no keys it picks itself (Integer keys are the client's)
    keyed_lookup = ("products", "currency_code", {"ID": 900, "name": "Server product"},
                    {"id": 901, "name": "Client product"})

    def __init__(self, cap: Any) -> None:
        super().__init__(cap.url, cap.user, cap.password, CAP_SPECS)
        self.cap = cap

    def contact_fields(self, i: int, n: int, account: str) -> dict[str, Any]:
        """A contact with an e-mail."""
        return {**super().contact_fields(i, n, account), "email": f"c{i}-{n}@example.com"}

    def create_at_one_time(self, entity: str, records: list[dict[str, Any]]) -> None:
        """One atomic JSON $batch change set: CAP stamps every record with its time."""
        spec = self.specs[entity]
        body = {"requests": [{"id": str(n), "atomicityGroup": "g1", "method": "POST",
                              "url": spec.entity_set,
                              "headers": {"content-type": "application/json"}, "body": r}
                             for n, r in enumerate(records)]}
        answer = self._check(self.http.post(f"{self.url}$batch", json=body)).json()
        assert all(r["status"] == 201 for r in answer["responses"]), answer


@contextmanager
def odatapy_side(page_size: int = 7, tracked: bool = True,
                 json_batch: bool = True) -> Iterator[OdatapySide]:
    """odatapy's server on a free port of 127.0.0.1, stopped (by its PID) afterwards."""
    port = free_port()
    args = [sys.executable, "-m", "tests.odatapy_server", str(port), str(page_size)]
    args += ([] if tracked else ["--untracked"]) + ([] if json_batch else
                                                     ["--multipart-batch-only"])
    process = subprocess.Popen(args, cwd=ROOT,
                               stdout=subprocess.PIPE, preexec_fn=_die_with_parent)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == b"ready"
        side = OdatapySide(f"http://127.0.0.1:{port}/", process, tracked)
        side.json_batch = json_batch
        yield side
    finally:
        process.terminate()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


# --- Salesforce (tests/salesforce_server.py) ------------------------------------

SALESFORCE_SPECS = [
    EntitySpec("account", "Account", "Id", "server",
               {"Name": "name", "NumberOfEmployees": "numberofemployees",
                "Industry": "industry"}),
    EntitySpec("contact", "Contact", "Id", "server",
               {"LastName": "lastname", "FirstName": "firstname", "AccountId": "accountid"},
               lookups={"AccountId": "account"}),
    EntitySpec("lead", "Lead", "Id", "server", {"LastName": "lastname", "Company": "company"}),
]


class SalesforceSide:
    """The Salesforce-shaped server (in this process), through its own record methods."""

    kind = "salesforce"
    roles = Roles("account", "Name", "contact", "LastName", "AccountId")

    def __init__(self, server: Any, username: str, password: str,
                 options: dict[str, str]) -> None:
        self.server = server
        self.url = server.url
        self.ca_file = server.tls.ca_file  # the client's worker must trust the test CA
        self.username, self.password, self.options = username, password, options
        self.specs = {s.name: s for s in SALESFORCE_SPECS}

    def entities(self) -> list[str]:
        """The replicateable objects, by the client's names."""
        return [n.lower() for n, o in self.server.objects.items() if o["replicateable"]]

    def seed(self, accounts: int, contacts_per_account: int = 1) -> None:
        """Accounts with contacts, and a lead."""
        for i in range(accounts):
            account = self.create("account", {"Name": f"Account {i}", "NumberOfEmployees": i})
            for n in range(contacts_per_account):
                self.create("contact", {"LastName": f"Last {i}-{n}", "AccountId": account})
        self.create("lead", {"LastName": "Lead", "Company": "Initech"})

    def snapshot(self, entity: str) -> dict[str, dict[str, Any]]:
        """The records not deleted."""
        spec = self.specs[entity]
        return {key: {f: comparable(spec, f, row.get(f)) for f in spec.fields}
                for key, row in self.server.live(spec.entity_set).items()}

    def create(self, entity: str, fields: dict[str, Any]) -> str:
        """A record made in Salesforce."""
        return str(self.server.insert(self.specs[entity].entity_set, fields))

    def update(self, entity: str, key: str, fields: dict[str, Any]) -> None:
        """A change made in Salesforce."""
        self.server.update(self.specs[entity].entity_set, key, fields)

    def delete(self, entity: str, key: str) -> None:
        """A deletion made in Salesforce."""
        self.server.delete(self.specs[entity].entity_set, key)


@contextmanager
def salesforce_side(folder: Path) -> Iterator[SalesforceSide]:
    """A Salesforce-shaped server with the portal admin as its user and a connected app."""
    from tests.conftest import ADMIN_EMAIL
    from tests.portal_process import Tls
    from tests.salesforce_server import SalesforceServer

    server = SalesforceServer(Tls.make(folder)).start()
    server.add_user(ADMIN_EMAIL, "Sales-force-1", "TOKEN")
    server.add_app("3MVG9-side", "side-secret")
    try:
        yield SalesforceSide(server, ADMIN_EMAIL, "Sales-force-1TOKEN",
                             {"consumer_key": "3MVG9-side", "consumer_secret": "side-secret"})
    finally:
        server.stop()
