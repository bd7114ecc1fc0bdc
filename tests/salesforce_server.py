"""A small Salesforce-shaped HTTPS server on 127.0.0.1 for the `salesforce` backend's tests.

No Salesforce can run here, so this server answers the few endpoints the
backend uses, each in the shape the Salesforce REST API Developer Guide
documents (pages named beside each route), with records kept in memory.
simple-salesforce, unchanged, is the client. It speaks TLS (trustme's test
CA, `tests.portal_process.Tls`) because simple-salesforce builds every
instance URL as https://.

Emulated:
* `POST /services/oauth2/token`: the username-password flow (password with the
  security token appended), the JWT bearer flow (RS256 assertion checked with
  the connected app's public key) and client credentials; refusals as the
  OAuth error body `{"error", "error_description"}` (RFC 6749 5.2), e.g.
  `invalid_grant: authentication failure`. Answers carry `access_token` and
  `instance_url` as in auth/oauth-username-password-token.response.json.
* Bearer sessions: an unknown or expired token answers 401
  `[{"errorCode": "INVALID_SESSION_ID"}]` (`expire_sessions()`); a user whose
  password expired gets a token but every call answers 403
  `INVALID_OPERATION_WITH_EXPIRED_PASSWORD` (the status is our guess: the
  guide names the code, not the status).
* `GET sobjects` (describeGlobal), `GET sobjects/{name}/describe`, with the
  field properties the backend reads (SOAP guide's DescribeSObjectResult Field).
* `GET query` and `GET queryAll` with `q`, `Sforce-Query-Options: batchSize`,
  `nextRecordsUrl` locators (`query/{locator}-{offset}`), a small SOQL subset:
  `SELECT fields | COUNT() FROM obj [WHERE cond] [ORDER BY f, ...] [LIMIT n]`,
  cond of `AND`, `OR`, parentheses, `= != > >= < <=` and `IN (...)`; queryAll
  includes deleted rows (`IsDeleted` true) as Salesforce's Recycle Bin does.
* `GET sobjects/{name}/deleted/?start&end` (getDeleted) with
  `earliestDateAvailable` and `latestDateCovered`.
* `GET limits` (DailyApiRequests) and `Sforce-Limit-Info: api-usage=n/max` on
  every answer; past the limit, 403 `REQUEST_LIMIT_EXCEEDED`.
* Bulk API 2.0 query jobs: `POST jobs/query` (query or queryAll; the job is
  complete at once), `GET jobs/query/{id}`, `GET jobs/query/{id}/results` as CSV
  with `maxRecords`, `Sforce-Locator` and `Sforce-NumberOfRecords`.
* sObject Collections: `POST composite/sobjects` (create), `PATCH composite/sobjects`
  (update), `PATCH composite/sobjects/{obj}/{externalIdField}` (upsert) and
  `DELETE composite/sobjects?ids=&allOrNone=false`, per-record results
  `{"id", "success", "errors": [{"statusCode", "message", "fields"}]}`;
  fields a create or update may not set answer `INVALID_FIELD_FOR_INSERT_UPDATE`.
* Stamps: `SystemModstamp` to the second, shared by records written in the same
  second; a record written twice in one second gets the next second (a real
  org would repeat the stamp, and the backend's version check could not tell).
* Cascades: deleting an Account deletes its Contacts (as Salesforce does); no
  other cascade or reparenting.
* Faults: `lose_answers[path] = n` applies the next n writes to that path and
  answers 502 (a gateway that lost the answer); `hold = (text, n)` holds the
  answer to the n-th request whose path has `text` (applied already) until
  `release()`; `purge(obj, id)` removes a
  deleted record for good (only getDeleted still lists it).

Not emulated: SOAP login, Bulk API 1.0 and ingest jobs, jobs that take time or
fail, relationship queries, SOQL
functions other than COUNT(), formula and roll-up fields, sharing and field
permissions, triggers, validation rules, duplicate rules, allOrNone=true
rollbacks, API versions (any `vXX.X` is served), the 2,000-row cap of
`Id IN`, case-insensitive Id matching.
"""

import base64
import csv
import io
import itertools
import re
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import orjson
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from portal.backends.salesforce_mapping import salesforce_id
from tests.portal_process import Tls

API = r"/services/data/v(?P<version>\d+\.\d+)"


def _field(name: str, kind: str, **more: Any) -> dict[str, Any]:
    """A describe field: createable and updateable unless said otherwise."""
    return {"name": name, "label": more.pop("label", name), "type": kind,
            "length": more.pop("length", 255 if kind in ("string", "email") else 0),
            "scale": more.pop("scale", 0), "nillable": more.pop("nillable", True),
            "createable": more.pop("createable", True), "updateable": more.pop("updateable", True),
            "defaultedOnCreate": more.pop("defaultedOnCreate", False),
            "externalId": more.pop("externalId", False), "nameField": more.pop("nameField", False),
            "referenceTo": more.pop("referenceTo", []), "picklistValues": more.pop(
                "picklistValues", []), **more}


def _system_fields() -> list[dict[str, Any]]:
    fixed = {"createable": False, "updateable": False, "nillable": False}
    return [_field("Id", "id", length=18, **fixed),
            _field("IsDeleted", "boolean", **fixed, defaultedOnCreate=True),
            _field("CreatedDate", "datetime", **fixed),
            _field("LastModifiedDate", "datetime", **fixed),
            _field("SystemModstamp", "datetime", **fixed)]


def standard_objects() -> dict[str, dict[str, Any]]:
    """Account, Contact, Lead, Task (polymorphic WhoId) and a non-replicateable history object."""
    client_id = {"length": 36, "label": "CRM Sync id"}
    objects = {
        "Account": ("001", [
            _field("Name", "string", nillable=False, nameField=True),
            _field("Industry", "picklist", picklistValues=[
                {"value": "Banking", "label": "Banking", "active": True},
                {"value": "Retail", "label": "Retail trade", "active": True}]),
            _field("NumberOfEmployees", "int"),
            _field("AnnualRevenue", "currency", scale=2),
            _field("Description", "textarea", length=32000),
            _field("CrmSyncId__c", "string", externalId=True, **client_id)]),
        "Contact": ("003", [
            _field("LastName", "string", nillable=False, nameField=True, length=80),
            _field("FirstName", "string", length=40),
            _field("Email", "email"),
            _field("AccountId", "reference", referenceTo=["Account"], relationshipName="Account"),
            # Not an External ID: creates are looked up by it before they are sent.
            _field("CrmSyncId__c", "string", **client_id)]),
        "Lead": ("00Q", [
            _field("LastName", "string", nillable=False, nameField=True, length=80),
            _field("Company", "string", nillable=False)]),
        "Task": ("00T", [
            _field("Subject", "combobox", picklistValues=[
                {"value": "Call", "label": "Call", "active": True}], nameField=True),
            _field("WhoId", "reference", referenceTo=["Contact", "Lead"],
                   relationshipName="Who")]),
        "AccountHistory": ("017", [_field("Field", "picklist", createable=False,
                                          updateable=False)]),
    }
    out = {}
    for name, (prefix, fields) in objects.items():
        out[name] = {"name": name, "label": name, "keyPrefix": prefix,
                     "queryable": True, "replicateable": name != "AccountHistory",
                     "createable": name != "AccountHistory", "updateable": True,
                     "deletable": True, "fields": _system_fields() + fields}
    return out


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _sf_time(moment: datetime) -> str:
    """Salesforce's date-time form in answers: 2013-05-07T22:07:19.000+0000."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000+0000")


def _parse_time(text: str) -> datetime:
    text = text.strip().replace("+0000", "+00:00")
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


class SoqlError(ValueError):
    """A query this server cannot answer (MALFORMED_QUERY)."""


_TOKEN_RE = re.compile(r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*')|(?P<op>>=|<=|!=|[=<>(),])|"
                       r"(?P<word>[\w.:+-]+))")


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if not match or match.end() == pos:
            raise SoqlError(f"unexpected text at {text[pos:pos + 20]!r}")
        out.append(match.group(0).strip())
        pos = match.end()
    return out


class Soql:
    """A parsed query of the subset named in the module docstring."""

    def __init__(self, text: str) -> None:
        match = re.fullmatch(r"\s*SELECT\s+(?P<fields>.+?)\s+FROM\s+(?P<obj>\w+)"
                             r"(?:\s+WHERE\s+(?P<where>.+?))?(?:\s+ORDER BY\s+(?P<order>.+?))?"
                             r"(?:\s+LIMIT\s+(?P<limit>\d+))?\s*", text, re.IGNORECASE | re.DOTALL)
        if not match:
            raise SoqlError("not SELECT ... FROM ...")
        self.count = match["fields"].strip().upper() == "COUNT()"
        self.fields = [] if self.count else [f.strip() for f in match["fields"].split(",")]
        self.obj = match["obj"]
        self.order = [f.strip() for f in (match["order"] or "").split(",") if f.strip()]
        self.limit = int(match["limit"]) if match["limit"] else None
        self.where = None
        if match["where"]:
            tokens = _tokens(match["where"])
            self.where, rest = self._or(tokens)
            if rest:
                raise SoqlError(f"unexpected {rest[0]!r}")

    def _or(self, tokens: list[str]) -> tuple[Any, list[str]]:
        left, tokens = self._and(tokens)
        while tokens and tokens[0].upper() == "OR":
            right, tokens = self._and(tokens[1:])
            left = ("or", left, right)
        return left, tokens

    def _and(self, tokens: list[str]) -> tuple[Any, list[str]]:
        left, tokens = self._factor(tokens)
        while tokens and tokens[0].upper() == "AND":
            right, tokens = self._factor(tokens[1:])
            left = ("and", left, right)
        return left, tokens

    def _factor(self, tokens: list[str]) -> tuple[Any, list[str]]:
        if tokens[0] == "(":
            inner, tokens = self._or(tokens[1:])
            if not tokens or tokens[0] != ")":
                raise SoqlError("missing )")
            return inner, tokens[1:]
        name, op, tokens = tokens[0], tokens[1], tokens[2:]
        if op.upper() == "IN":
            if tokens[0] != "(":
                raise SoqlError("IN without (")
            values, tokens = [], tokens[1:]
            while tokens[0] != ")":
                if tokens[0] != ",":
                    values.append(_literal(tokens[0]))
                tokens = tokens[1:]
            return ("in", name, values), tokens[1:]
        return ("cmp", name, op, _literal(tokens[0])), tokens[1:]


def _literal(token: str) -> Any:
    if token.startswith("'"):
        return re.sub(r"\\(.)", r"\1", token[1:-1])
    if token.lower() in ("true", "false"):
        return token.lower() == "true"
    if token.lower() == "null":
        return None
    if re.fullmatch(r"\d{4}-\d\d-\d\dT.*", token):
        return _parse_time(token)
    return float(token)


def _csv_text(value: Any) -> str:
    """A value as Bulk API 2.0 CSV gives it: null empty, booleans lower case, times with Z."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value.endswith(".000+0000"):
        return value[:-5] + "Z"
    return str(value)


def _value(row: dict[str, Any], name: str) -> Any:
    value = next((v for k, v in row.items() if k.lower() == name.lower()), None)
    if isinstance(value, str) and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.000\+0000", value):
        return _parse_time(value)
    return value


def _matches(cond: Any, row: dict[str, Any]) -> bool:
    if cond is None:
        return True
    if cond[0] == "or":
        return _matches(cond[1], row) or _matches(cond[2], row)
    if cond[0] == "and":
        return _matches(cond[1], row) and _matches(cond[2], row)
    if cond[0] == "in":
        return _value(row, cond[1]) in cond[2]
    _, name, op, literal = cond
    value = _value(row, name)
    if op == "=":
        return bool(value == literal)
    if op == "!=":
        return bool(value != literal)
    if value is None or literal is None:
        return False
    return bool({">": value > literal, ">=": value >= literal, "<": value < literal,
                 "<=": value <= literal}[op])


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any) -> None:
        """Tests read `requests`, not a log line per request."""


class SalesforceServer:
    """The server: users, objects, records, sessions, API usage; `url` is its login URL."""

    def __init__(self, tls: Tls, *, daily_limit: int = 100_000) -> None:
        self.tls = tls
        self.objects = standard_objects()
        self.records: dict[str, dict[str, dict[str, Any]]] = {n: {} for n in self.objects}
        self.deletions: list[tuple[str, str, datetime]] = []  # (object, id, when)
        self.earliest_deleted = _now() - timedelta(days=15)
        self.users: dict[str, dict[str, Any]] = {}
        self.apps: dict[str, dict[str, Any]] = {}  # consumer key -> secret, public key
        self.sessions: set[str] = set()
        self.daily_limit, self.used = daily_limit, 0
        self.lose_answers: dict[str, int] = {}
        # Hold the answer to the n-th request whose path contains the text (after it is
        # applied) until `release()`: a test kills the client meanwhile.
        self.hold: tuple[str, int] | None = None
        self.holding, self._released = threading.Event(), threading.Event()
        self.requests: list[tuple[str, str]] = []  # (method, path) of each request
        self._cursors: dict[str, list[dict[str, Any]]] = {}
        self.bulk_jobs: dict[str, dict[str, Any]] = {}
        self._serial = itertools.count(1)
        self._lock = threading.RLock()
        self._http = make_server("127.0.0.1", 0, self._wsgi, threaded=True,
                                 request_handler=_QuietHandler,
                                 ssl_context=(str(tls.certfile), str(tls.keyfile)))
        self.url = f"https://127.0.0.1:{self._http.server_port}"
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    # --- set-up --------------------------------------------------------------

    def start(self) -> "SalesforceServer":
        """Serve in a daemon thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._http.shutdown()

    def add_user(self, username: str, password: str, token: str, *,
                 expired: bool = False) -> None:
        """A user who signs in with `password` + `token` appended."""
        self.users[username] = {"password": password + token, "expired": expired}

    def add_app(self, consumer_key: str, secret: str, public_key: str | None = None) -> None:
        """A connected app (its consumer key and secret; a public key for JWT bearer)."""
        self.apps[consumer_key] = {"secret": secret, "public_key": public_key}

    def expire_sessions(self) -> None:
        """Every session issued so far becomes invalid (INVALID_SESSION_ID)."""
        self.sessions.clear()

    def insert(self, obj: str, values: dict[str, Any]) -> str:
        """A record as if made in Salesforce; returns its id."""
        with self._lock:
            return self._create(obj, values)

    def update(self, obj: str, key: str, values: dict[str, Any]) -> None:
        """A change made in Salesforce."""
        with self._lock:
            row = self.records[obj][key]
            row.update(values)
            self._touch(row)

    def delete(self, obj: str, key: str) -> None:
        """A deletion made in Salesforce (to the Recycle Bin)."""
        with self._lock:
            self._delete(obj, key)

    def purge(self, obj: str, key: str) -> None:
        """Empty a deleted record from the Recycle Bin: only getDeleted remembers it."""
        with self._lock:
            self.records[obj].pop(key)

    def live(self, obj: str) -> dict[str, dict[str, Any]]:
        """The records not deleted, by id."""
        return {k: r for k, r in self.records[obj].items() if not r["IsDeleted"]}

    # --- records -------------------------------------------------------------

    def _new_id(self, obj: str) -> str:
        return salesforce_id(f"{self.objects[obj]['keyPrefix']}{next(self._serial):012d}")

    def _touch(self, row: dict[str, Any], created: bool = False) -> None:
        # Stamps are to the second, as a real org's: records written in one second share
        # one. A record written twice in one second gets the next second (a real org's
        # would repeat its stamp; then the backend cannot tell the writes apart).
        moment = _now()
        if row.get("SystemModstamp"):
            moment = max(moment, _parse_time(row["SystemModstamp"]) + timedelta(seconds=1))
        stamp = _sf_time(moment)
        if created:
            row["CreatedDate"] = stamp
        row["LastModifiedDate"] = row["SystemModstamp"] = stamp

    def _create(self, obj: str, values: dict[str, Any]) -> str:
        key = self._new_id(obj)
        row: dict[str, Any] = {f["name"]: None for f in self.objects[obj]["fields"]}
        row.update(values)
        row.update({"Id": key, "IsDeleted": False})
        self._touch(row, created=True)
        self.records[obj][key] = row
        return key

    def _delete(self, obj: str, key: str) -> None:
        row = self.records[obj][key]
        row["IsDeleted"] = True
        self._touch(row)
        self.deletions.append((obj, key, _now()))
        if obj == "Account":  # an account's contacts go with it, as in Salesforce
            for child, contact in list(self.live("Contact").items()):
                if contact["AccountId"] == key:
                    self._delete("Contact", child)

    def _find(self, key: str) -> tuple[str, dict[str, Any]] | None:
        for obj, rows in self.records.items():
            if key in rows:
                return obj, rows[key]
        return None

    def _refused_fields(self, obj: str, values: dict[str, Any], create: bool) -> list[str]:
        allowed = {f["name"] for f in self.objects[obj]["fields"]
                   if f["createable" if create else "updateable"]}
        return [k for k in values if k not in allowed and k not in ("attributes", "Id", "id")]

    # --- HTTP ----------------------------------------------------------------

    def release(self) -> None:
        """Let a held answer go (to a client that is gone by now)."""
        self._released.set()

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        with self._lock:
            self.requests.append((request.method, request.path))
            response = self._answer(request)
            held = self.hold is not None and self.hold[0] in request.full_path and (
                sum(self.hold[0] in p for _, p in self.requests) >= self.hold[1])
        if held:
            self.hold = None
            self.holding.set()
            self._released.wait(60)
        return response(environ, start_response)

    def _json(self, body: Any, status: int = 200) -> Response:
        response = Response(orjson.dumps(body), status, content_type="application/json")
        response.headers["Sforce-Limit-Info"] = f"api-usage={self.used}/{self.daily_limit}"
        return response

    def _errors(self, status: int, code: str, message: str) -> Response:
        # errorcodes.htm: a list of {"message", "errorCode"}.
        return self._json([{"message": message, "errorCode": code}], status)

    def _answer(self, request: Request) -> Response:
        path = request.path
        if path == "/services/oauth2/token" and request.method == "POST":
            return self._token(request)
        match = re.match(API + r"/(?P<rest>.*)$", path)
        if not match:
            return self._errors(404, "NOT_FOUND", "The requested resource does not exist")
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in self.sessions:
            return self._errors(401, "INVALID_SESSION_ID", "Session expired or invalid")
        if token.endswith("!expired"):
            return self._errors(403, "INVALID_OPERATION_WITH_EXPIRED_PASSWORD",
                                "The users password has expired, you must call SetPassword "
                                "before attempting any other API operations")
        self.used += 1
        if self.used > self.daily_limit:
            return self._errors(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
        rest = match["rest"].rstrip("/")
        try:
            return self._route(request, rest)
        except SoqlError as exc:
            return self._errors(400, "MALFORMED_QUERY", str(exc))

    def _route(self, request: Request, rest: str) -> Response:
        method = request.method
        if rest == "sobjects" and method == "GET":
            # dome-describeglobal.md
            return self._json({"encoding": "UTF-8", "maxBatchSize": 200, "sobjects": [
                {k: v for k, v in o.items() if k != "fields"} for o in self.objects.values()]})
        if m := re.fullmatch(r"sobjects/(\w+)/describe", rest):
            if m[1] not in self.objects:
                return self._errors(404, "NOT_FOUND", "The requested resource does not exist")
            return self._json(self.objects[m[1]])  # dome-sobject-describe.md
        if m := re.fullmatch(r"sobjects/(\w+)/deleted", rest):
            return self._deleted(m[1], request)
        if rest == "limits":
            return self._json({"DailyApiRequests": {"Max": self.daily_limit,
                                                    "Remaining": self.daily_limit - self.used}})
        if m := re.fullmatch(r"(query|queryAll)(?:/(.+))?", rest):
            return self._query(request, m[1] == "queryAll", m[2])
        if m := re.fullmatch(r"jobs/query(?:/(\w+))?(/results)?", rest):
            return self._bulk_query(request, m[1], bool(m[2]))
        if m := re.fullmatch(r"composite/sobjects(?:/(\w+)/(\w+))?", rest):
            return self._collections(request, m[1], m[2])
        return self._errors(404, "NOT_FOUND", "The requested resource does not exist")

    def _token(self, request: Request) -> Response:
        # RFC 6749 5.2 error bodies, as Salesforce's token endpoint answers them.
        form = {k: v[0] for k, v in parse_qs(request.get_data(as_text=True)).items()}
        grant = form.get("grant_type")
        user: dict[str, Any] | None = None
        if grant == "password":
            app = self.apps.get(form.get("client_id", ""))
            if app is None:
                return self._json({"error": "invalid_client_id",
                                   "error_description": "client identifier invalid"}, 400)
            if app["secret"] != form.get("client_secret"):
                return self._json({"error": "invalid_client",
                                   "error_description": "invalid client credentials"}, 400)
            user = self.users.get(form.get("username", ""))
            if user is None or user["password"] != form.get("password"):
                return self._json({"error": "invalid_grant",
                                   "error_description": "authentication failure"}, 400)
        elif grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            try:
                claims = jwt.decode(form.get("assertion", ""), options={"verify_signature": False})
                app = self.apps[claims["iss"]]
                jwt.decode(form["assertion"], app["public_key"], algorithms=["RS256"],
                           audience=self.url)
                user = self.users[claims["sub"]]
            except (jwt.PyJWTError, KeyError, TypeError):
                return self._json({"error": "invalid_grant",
                                   "error_description": "invalid assertion"}, 400)
        elif grant == "client_credentials":
            app = self.apps.get(form.get("client_id", ""))
            if app is None or app["secret"] != form.get("client_secret"):
                return self._json({"error": "invalid_client",
                                   "error_description": "invalid client credentials"}, 400)
            user = {"expired": False}
        else:
            return self._json({"error": "unsupported_grant_type",
                               "error_description": "grant type not supported"}, 400)
        token = "00D000000000001!" + base64.urlsafe_b64encode(uuid.uuid4().bytes).decode()
        if user.get("expired"):
            token += "!expired"
        self.sessions.add(token)
        # auth/oauth-username-password-token.response.json
        return self._json({"id": f"{self.url}/id/00D000000000001EAA/005000000000001AAA",
                           "issued_at": str(int(time.time() * 1000)), "instance_url": self.url,
                           "signature": "c2lnbmF0dXJl", "access_token": token,
                           "token_type": "Bearer"})

    def _deleted(self, obj: str, request: Request) -> Response:
        # dome-get-deleted.md
        start, end = (_parse_time(request.args[k]) for k in ("start", "end"))
        if start < self.earliest_deleted:
            return self._errors(400, "INVALID_REPLICATION_DATE",
                                "startDate before org replication enabled date")
        gone = [{"id": key, "deletedDate": _sf_time(when)} for o, key, when in self.deletions
                if o == obj and start <= when <= end]
        return self._json({"deletedRecords": gone,
                           "earliestDateAvailable": _sf_time(self.earliest_deleted),
                           "latestDateCovered": _sf_time(end)})

    def _query(self, request: Request, include_deleted: bool, locator: str | None) -> Response:
        # resources-query: pages of batchSize rows with nextRecordsUrl until done.
        if locator is not None:
            cursor, offset = locator.rsplit("-", 1)
            rows = self._cursors.get(cursor)
            if rows is None:
                return self._errors(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
            return self._page(request, cursor, rows, int(offset), include_deleted)
        soql = Soql(request.args.get("q", ""))
        if soql.obj not in self.objects:
            return self._errors(400, "INVALID_TYPE", f"sObject type '{soql.obj}' is not supported.")
        rows = [r for r in self.records[soql.obj].values()
                if (include_deleted or not r["IsDeleted"]) and _matches(soql.where, r)]
        if soql.count:
            return self._json({"totalSize": len(rows), "done": True, "records": []})
        for name in reversed(soql.order):
            rows.sort(key=lambda r, n=name: (_value(r, n) is not None, _value(r, n)))
        rows = rows[:soql.limit] if soql.limit is not None else rows
        fields = {f["name"].lower(): f["name"] for f in self.objects[soql.obj]["fields"]}
        unknown = [f for f in soql.fields if f.lower() not in fields]
        if unknown:
            return self._errors(400, "INVALID_FIELD", f"No such column '{unknown[0]}' on entity "
                                f"'{soql.obj}'.")
        selected = [{"attributes": {"type": soql.obj, "url": f"/services/data/v62.0/sobjects/"
                                    f"{soql.obj}/{r['Id']}"},
                     **{fields[f.lower()]: r[fields[f.lower()]] for f in soql.fields}}
                    for r in rows]
        cursor = uuid.uuid4().hex[:15]
        self._cursors[cursor] = selected
        return self._page(request, cursor, selected, 0, include_deleted)

    def _page(self, request: Request, cursor: str, rows: list[dict[str, Any]], offset: int,
              include_deleted: bool) -> Response:
        options = request.headers.get("Sforce-Query-Options", "")
        size = int(m[1]) if (m := re.search(r"batchSize=(\d+)", options)) else 2000
        page = rows[offset:offset + size]
        done = offset + size >= len(rows)
        body: dict[str, Any] = {"totalSize": len(rows), "done": done, "records": page}
        if not done:
            version = urlsplit(request.path).path.split("/")[3]
            body["nextRecordsUrl"] = (f"/services/data/{version}/"
                                      f"{'queryAll' if include_deleted else 'query'}/"
                                      f"{cursor}-{offset + size}")
        return self._json(body)

    def _bulk_query(self, request: Request, job_id: str | None, results: bool) -> Response:
        # Bulk API 2.0 Developer Guide: "Create a Query Job", "Get Information About a
        # Query Job", "Get Results for a Query Job" (CSV, Sforce-Locator, maxRecords).
        if job_id is None and request.method == "POST":
            body = orjson.loads(request.get_data())
            soql = Soql(body["query"])
            if soql.obj not in self.objects or soql.count or soql.order:
                return self._errors(400, "INVALIDJOB", "this query cannot be a Bulk API job")
            include = body.get("operation") == "queryAll"
            rows = [r for r in self.records[soql.obj].values()
                    if (include or not r["IsDeleted"]) and _matches(soql.where, r)]
            job = uuid.uuid4().hex[:15]
            self.bulk_jobs[job] = {"fields": soql.fields, "rows": rows}
            return self._json({"id": job, "operation": body.get("operation"),
                               "object": soql.obj, "state": "UploadComplete",
                               "contentType": "CSV", "columnDelimiter": "COMMA",
                               "lineEnding": "LF", "apiVersion": 62.0})
        job = self.bulk_jobs.get(job_id or "")
        if job is None:
            return self._errors(404, "NOT_FOUND", "The requested resource does not exist")
        if not results:
            return self._json({"id": job_id, "state": "JobComplete",
                               "numberRecordsProcessed": len(job["rows"])})
        start = int(request.args.get("locator") or 0)
        size = int(request.args.get("maxRecords") or 50_000)
        chunk = job["rows"][start:start + size]
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n", quoting=csv.QUOTE_ALL)
        writer.writerow(job["fields"])
        for row in chunk:
            writer.writerow([_csv_text(row.get(f)) for f in job["fields"]])
        response = Response(text.getvalue(), 200, content_type="text/csv")
        more = start + size < len(job["rows"])
        response.headers["Sforce-Locator"] = str(start + size) if more else "null"
        response.headers["Sforce-NumberOfRecords"] = str(len(chunk))
        response.headers["Sforce-Limit-Info"] = f"api-usage={self.used}/{self.daily_limit}"
        return response

    def _collections(self, request: Request, obj: str | None, external: str | None) -> Response:
        path = request.path
        if request.method == "DELETE":
            results = [self._delete_one(k) for k in request.args.get("ids", "").split(",") if k]
        else:
            body = orjson.loads(request.get_data())
            results = [self._write_one(request.method, r, obj, external)
                       for r in body.get("records") or []]
        if self.lose_answers.get(path):
            self.lose_answers[path] -= 1
            return Response("<html><body>502 Bad Gateway</body></html>", 502,
                            content_type="text/html")
        return self._json(results)

    def _failure(self, code: str, message: str, fields: list[str] | None = None,
                 key: str | None = None) -> dict[str, Any]:
        return {"id": key, "success": False,
                "errors": [{"statusCode": code, "message": message, "fields": fields or []}]}

    def _delete_one(self, key: str) -> dict[str, Any]:
        found = self._find(key)
        if found is None or found[1]["IsDeleted"]:
            return self._failure("ENTITY_IS_DELETED", "entity is deleted")
        self._delete(found[0], key)
        return {"id": key, "success": True, "errors": []}

    def _write_one(self, method: str, record: dict[str, Any], obj: str | None,
                   external: str | None) -> dict[str, Any]:
        kind = obj or (record.get("attributes") or {}).get("type")
        if kind not in self.objects:
            return self._failure("INVALID_TYPE", f"no such object {kind}")
        values = {k: v for k, v in record.items() if k not in ("attributes", "id", "Id")}
        key = record.get("id") or record.get("Id")
        if external is not None:  # upsert on an External ID
            match = [k for k, r in self.live(kind).items() if r.get(external) == values.get(
                external)]
            key = match[0] if match else None
            create = key is None
        else:
            create = method == "POST"
        refused = self._refused_fields(kind, values, create)
        if refused:
            return self._failure("INVALID_FIELD_FOR_INSERT_UPDATE",
                                 f"Unable to create/update fields: {', '.join(refused)}.",
                                 refused, key)
        if create:
            key = self._create(kind, values)
            answer = {"id": key, "success": True, "errors": []}
            return {**answer, "created": True} if external else answer
        row = self.records[kind].get(str(key))
        if row is None or row["IsDeleted"]:
            return self._failure("ENTITY_IS_DELETED", "entity is deleted", key=None)
        row.update(values)
        self._touch(row)
        answer = {"id": key, "success": True, "errors": []}
        return {**answer, "created": False} if external else answer
