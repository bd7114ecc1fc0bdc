"""Map Salesforce REST API answers to our definitions, records and write results.

Pure functions over decoded JSON (and header text), for the `salesforce`
backend: which objects sync (describeGlobal), an object's describe as our
Entity, SOQL query pages as our JSON records, getUpdated / getDeleted answers,
sObject Collections results as WriteResults, the `Sforce-Limit-Info` header,
and error bodies as our errors.

Names: our logical names are lower case, Salesforce's API names are not
(`Account`, `MyExtId__c`), so an object's SalesforceObject keeps both; the
Salesforce `Id` field is our primary id attribute `id`.

Ids: Salesforce record ids (15 or 18 characters, not GUIDs) are returned as
server keys in their 18-character form. Turning a server key into the client's
GUID is the shared key mapping's job, not this module's.

Picklists: a Salesforce picklist value is text (its API name), a client option
is a whole number; option_values numbers a field's values (docs/salesforce.md,
"Picklists").
"""

import csv
import hashlib
import io
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from portal.backends.base import WriteResult
from portal.errors import BackendError, CredentialsRefused, InvalidInput
from portal.orgs.metadata import Attribute, Entity, Option, check_entity, entity_set_name
from portal.orgs.types import INT32, datetime_text, from_salesforce

# The suffix of an 18-character id: one character per 5 of the 15, saying which are upper case.
_SUFFIX_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_ID_RE = re.compile(r"[0-9A-Za-z]{15}(?:[0-9A-Za-z]{3})?")
# Our precision (decimal places) goes to 10; a Salesforce scale above that keeps 10.
_MAX_PRECISION = 10
# Error codes that mean the session or the credentials were refused.
AUTH_ERROR_CODES = frozenset({
    "INVALID_SESSION_ID", "INVALID_LOGIN", "INVALID_AUTH_HEADER", "PASSWORD_LOCKOUT",
    "INVALID_OPERATION_WITH_EXPIRED_PASSWORD", "LOGIN_MUST_USE_SECURITY_TOKEN",
})
# OAuth 2.0 token endpoint errors that refuse the credentials (not the request's form).
OAUTH_REFUSALS = frozenset({"invalid_grant", "invalid_client", "invalid_client_id",
                            "unauthorized_client", "inactive_user", "inactive_org"})
# Per-record errors of an update or delete that mean the record is not there.
MISSING_ERROR_CODES = frozenset({"ENTITY_IS_DELETED", "NOT_FOUND", "INVALID_CROSS_REFERENCE_KEY"})


# --------------------------------------------------------------------- ids


def salesforce_id(value: Any) -> str:
    """The 18-character form of a Salesforce record id (15 or 18 characters); ValueError if none.

    The last 3 characters of an 18-character id encode, 5 characters each, which
    of the 15 are upper case, so an 18-character id survives case-insensitive
    handling: the case of one written all in lower or all in upper case is
    restored from the suffix. A mixed-case id whose case disagrees with its
    suffix was altered, and is refused.
    """
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a Salesforce id (15 or 18 letters and digits)")
    base = value[:15]
    if len(value) == 18:
        restored = _restore_case(base, value[15:])
        if restored != base and base not in (base.lower(), base.upper()):
            raise ValueError(f"{value!r} is not a Salesforce id (its case disagrees with its"
                             " checksum)")
        base = restored
    return base + _suffix(base)


def _suffix(base: str) -> str:
    """The checksum suffix of a 15-character (case-sensitive) id."""
    out = ""
    for start in range(0, 15, 5):
        bits = sum(1 << i for i, char in enumerate(base[start:start + 5]) if "A" <= char <= "Z")
        out += _SUFFIX_CHARS[bits]
    return out


def _restore_case(base: str, suffix: str) -> str:
    """The 15 characters in the case the suffix says; ValueError if it cannot be theirs."""
    chars = []
    for n, code in enumerate(suffix.upper()):
        bits = _SUFFIX_CHARS.find(code)
        if bits < 0:
            raise ValueError(f"{base + suffix!r} is not a Salesforce id (bad checksum)")
        for i, char in enumerate(base[n * 5:n * 5 + 5]):
            upper = bool(bits >> i & 1)
            if upper and not char.isalpha():
                raise ValueError(f"{base + suffix!r} is not a Salesforce id (bad checksum)")
            chars.append(char.upper() if upper else char.lower())
    return "".join(chars)


def key_prefixes(describe_global: dict[str, Any]) -> dict[str, str]:
    """Id prefix (first 3 characters) -> object API name, from a describeGlobal answer.

    A polymorphic reference (several `referenceTo`) names its target only by this prefix.
    """
    return {str(o["keyPrefix"]): str(o["name"]) for o in describe_global.get("sobjects") or []
            if isinstance(o, dict) and o.get("keyPrefix") and o.get("name")}


# --------------------------------------------------------------- picklists

# Option values are 1 .. 2**31 - 1 (a picklist is Edm.Int32; 0 and negatives left out).
_OPTION_SPAN = INT32[1]


def option_value(value: str, attempt: int = 0) -> int:
    """The option number derived from a picklist value: 31 bits of its SHA-256 (and `attempt`).

    Derived, not stored: the same value has the same number on every run, every
    connection and after any re-describe, with no state to lose or reset.
    """
    digest = hashlib.sha256(f"{attempt}\x1f{value}".encode()).digest()
    return 1 + int.from_bytes(digest[:8], "big") % _OPTION_SPAN


def option_values(values: Collection[str], taken: dict[str, int] | None = None
                  ) -> dict[str, int]:
    """Each picklist value's option number (value -> number), distinct within the field.

    Two values of one field with the same number (about one field in 1.75 million
    for 50 values) are told apart by trying the next `attempt`: the values are
    numbered in sorted order, so the outcome depends only on the set of values.
    `taken` are numbers already given (values found outside the describe are
    numbered after the describe's).
    """
    numbers = dict(taken or {})
    used = set(numbers.values())
    for value in sorted(v for v in values if v not in numbers):
        attempt = 0
        while option_value(value, attempt) in used:
            attempt += 1
        numbers[value] = option_value(value, attempt)
        used.add(numbers[value])
    return numbers


def _picklist(item: dict[str, Any]) -> tuple[dict[str, int], list[Option]]:
    """A picklist field's values numbered, and its options with Salesforce's labels.

    Inactive values stay options: records that hold one still read and write.
    """
    entries = [p for p in item.get("picklistValues") or []
               if isinstance(p, dict) and isinstance(p.get("value"), str)]
    numbers = option_values([p["value"] for p in entries])
    options = [Option(numbers[p["value"]], str(p.get("label") or p["value"])) for p in entries]
    return numbers, options


# ---------------------------------------------------------------- metadata


def synced_objects(describe_global: dict[str, Any]) -> list[str]:
    """API names of the objects that can sync: `replicateable` and `queryable` ones."""
    return [str(o["name"]) for o in describe_global.get("sobjects") or []
            if isinstance(o, dict) and o.get("replicateable") is True
            and o.get("queryable") is True and not o.get("deprecatedAndHidden")]


@dataclass
class SalesforceObject:
    """An object's describe as our Entity, with what the Entity has no place for."""

    entity: Entity
    api_name: str  # "Account"
    fields: dict[str, str]  # our attribute name -> the field's API name
    field_types: dict[str, str]  # our attribute name -> Salesforce field type
    createable: frozenset[str]  # our attribute names a create may set
    updateable: frozenset[str]  # our attribute names an update may set
    # Our attribute name of a picklist -> its values' option numbers (value -> number).
    picklists: dict[str, dict[str, int]] = field(default_factory=dict)
    external_ids: list[str] = field(default_factory=list)  # our names of External ID fields
    key_prefix: str | None = None

    def option_number(self, name: str, value: Any) -> int:
        """The option number of a picklist value read from Salesforce (ValueError if not text).

        A value the describe does not list (an unrestricted picklist's, or one
        added since) is numbered all the same, after the listed ones.
        """
        if not isinstance(value, str):
            raise ValueError(f"{value!r} is not a picklist value")
        numbers = self.picklists[name]
        if value not in numbers:  # kept for the run: an upload of it writes the value back
            numbers[value] = option_values([value], numbers)[value]
        return numbers[value]

    def picklist_value(self, name: str, number: Any) -> str:
        """The Salesforce value of a client's option number; ValueError if it has none.

        Text that is one of the values passes (a client whose metadata still holds
        the picklist as text).
        """
        if isinstance(number, str) and number in self.picklists[name]:
            return number
        for value, known in self.picklists[name].items():
            if known == number and type(number) is int:
                return value
        raise ValueError(f"option {number!r} is not a value of this picklist in Salesforce "
                         f"(its values: {', '.join(sorted(self.picklists[name]))})")

    def attribute_name(self, api_name: str) -> str | None:
        """Our attribute name of a field's API name (case-insensitive, as Salesforce), or None."""
        name = api_name.lower()
        return name if name in self.fields else None


def object_from_describe(describe: dict[str, Any], synced: Collection[str]) -> SalesforceObject:
    """An sObject Describe answer as our Entity (checked and completed) and its field names.

    `synced` names the objects that sync (synced_objects). A reference keeps
    the targets among them and is skipped when none is: a lookup must point to
    an entity the client has. Fields of types we do not model (see
    portal.orgs.types.from_salesforce) are skipped too.
    """
    names = {n.lower() for n in synced} | {str(describe["name"]).lower()}
    api_name = str(describe["name"])
    label = str(describe.get("label") or api_name)
    fields: dict[str, str] = {}
    types: dict[str, str] = {}
    createable: set[str] = set()
    updateable: set[str] = set()
    picklists: dict[str, dict[str, int]] = {}
    external_ids: list[str] = []
    attributes: list[Attribute] = []
    name_field = None
    for item in describe.get("fields") or []:
        attr = _attribute(item)
        if attr is None:
            continue
        if attr.type == "lookup":
            attr.targets = [t for t in attr.targets if t in names]
            if not attr.targets:
                continue
        name = attr.logicalname
        fields[name] = str(item["name"])
        types[name] = str(item["type"])
        if item.get("createable"):
            createable.add(name)
        if item.get("updateable"):
            updateable.add(name)
        if attr.type == "picklist":
            picklists[name], attr.options = _picklist(item)
        if item.get("externalId"):
            external_ids.append(name)
        if item.get("nameField"):
            name_field = name
        attributes.append(attr)
    logicalname = api_name.lower()
    entity = Entity(logicalname=logicalname, displayname=label, primaryidattribute="id",
                    primarynameattribute=name_field, entitysetname=entity_set_name(logicalname),
                    attributes=attributes)
    return SalesforceObject(check_entity(entity, names), api_name, fields, types,
                            frozenset(createable), frozenset(updateable), picklists,
                            external_ids, describe.get("keyPrefix") or None)


def _attribute(item: dict[str, Any]) -> Attribute | None:
    """One describe field as our Attribute; None for a type we do not model."""
    kind = from_salesforce(item.get("type"))
    if kind is None:
        return None
    if kind.options and not item.get("picklistValues"):
        kind = from_salesforce("string")  # a picklist without values has no option to offer
        assert kind is not None
    name = str(item["name"]).lower()
    precision = None
    if kind.precision is not None and isinstance(item.get("scale"), int):
        precision = min(item["scale"], _MAX_PRECISION)
    length = item.get("length")
    return Attribute(
        logicalname=name,
        type=kind.name,
        displayname=str(item.get("label") or item["name"]),
        maxlength=length if kind.maxlength is not None and isinstance(length, int) and length > 0
        else None,
        precision=precision,
        # Required: the server refuses a create without it (booleans are never null but
        # defaulted, so not required).
        required=item.get("nillable") is False and bool(item.get("createable"))
        and not item.get("defaultedOnCreate") and kind.name != "uniqueidentifier",
        targets=[str(t).lower() for t in item.get("referenceTo") or []] if kind.targets else [],
        issystem=not item.get("createable") and not item.get("updateable"),
    )


# ----------------------------------------------------------------- records


@dataclass
class QueryPage:
    """One page of a SOQL query (or queryAll) answer as our records."""

    records: list[dict[str, Any]]  # our JSON form; `id` and references are server keys
    versions: dict[str, str]  # server key -> SystemModstamp (stored form), where selected
    deleted: list[str]  # server keys of rows with IsDeleted true (queryAll)
    next_url: str | None  # nextRecordsUrl; None when `done`
    done: bool


def query_page(obj: SalesforceObject, body: dict[str, Any]) -> QueryPage:
    """A query answer (`records`, `done`, `nextRecordsUrl`) as our records; `attributes` dropped."""
    records: list[dict[str, Any]] = []
    versions: dict[str, str] = {}
    deleted: list[str] = []
    for row in body.get("records") or []:
        key = _row_key(row)
        if row.get("IsDeleted") is True:
            deleted.append(key)
            continue
        record = record_from_row(obj, row)
        record["id"] = key
        records.append(record)
        stamp = row.get("SystemModstamp")
        if isinstance(stamp, str):
            versions[key] = datetime_text(stamp)
    done = body.get("done") is not False
    next_url = None if done else body.get("nextRecordsUrl")
    if not done and not isinstance(next_url, str):
        raise BackendError("Salesforce said the query is not done but gave no nextRecordsUrl")
    return QueryPage(records, versions, deleted, next_url, done)


def _row_key(row: dict[str, Any]) -> str:
    """The record id of a query row: its Id, or the end of its `attributes.url`."""
    value = row.get("Id")
    if value is None:
        value = str((row.get("attributes") or {}).get("url") or "").rsplit("/", 1)[-1]
    try:
        return salesforce_id(value)
    except ValueError as exc:
        raise BackendError(f"Salesforce answered a record without a valid id: {exc}") from None


def record_from_row(obj: SalesforceObject, row: dict[str, Any]) -> dict[str, Any]:
    """A record as Salesforce gives it as our JSON form: known fields only, stored forms."""
    record: dict[str, Any] = {}
    for api_name, value in row.items():
        name = obj.attribute_name(api_name)
        if name is None:
            continue  # `attributes`, relationship objects, fields we do not model
        try:
            if name in obj.picklists and value is not None:
                record[name] = obj.option_number(name, value)
            else:
                record[name] = _read_value(obj.field_types[name], value)
        except ValueError as exc:
            raise BackendError(f"Salesforce answered a bad {obj.api_name}.{api_name}: {exc}"
                               ) from None
    return record


def _read_value(field_type: str, value: Any) -> Any:
    if value is None:
        return None
    if field_type in ("datetime", "date"):
        return datetime_text(value)  # a date is midnight UTC
    if field_type in ("id", "reference"):
        return salesforce_id(value)
    return value


# Bulk API 2.0 results are CSV: every value is text, an empty one is null.
_CSV_NUMBERS = {"int": int, "long": int, "double": float, "currency": float, "percent": float}


def csv_rows(obj: SalesforceObject, text: str) -> list[dict[str, Any]]:
    """A Bulk API 2.0 query result (CSV, a header of field API names) as query rows.

    The rows take the JSON forms of a REST query (booleans, numbers, null), so
    `query_page` maps them; fields we do not model stay text.
    """
    reader = csv.DictReader(io.StringIO(text))
    types = {api.lower(): obj.field_types[name] for name, api in obj.fields.items()}
    types.update({"isdeleted": "boolean", "systemmodstamp": "datetime"})
    rows = []
    for line in reader:
        row: dict[str, Any] = {}
        for api, value in line.items():
            kind = types.get(str(api).lower())
            try:
                row[str(api)] = _csv_value(kind, value)
            except ValueError:
                raise BackendError(f"Salesforce's Bulk API answered a bad {obj.api_name}."
                                   f"{api}: {value!r}") from None
        rows.append(row)
    return rows


def _csv_value(kind: str | None, value: str | None) -> Any:
    if value is None or value == "":
        return None
    if kind == "boolean":
        if value.lower() not in ("true", "false"):
            raise ValueError(value)
        return value.lower() == "true"
    if kind in _CSV_NUMBERS:
        return _CSV_NUMBERS[kind](value)
    return value


def record_body(obj: SalesforceObject, values: dict[str, Any], *,
                key: str | None = None) -> dict[str, Any]:
    """One record of an sObject Collections request: a create without `key`, else an update.

    References must already be server keys. A value for a field this operation
    may not set is refused (InvalidInput naming it), before anything is sent.
    """
    allowed = obj.createable if key is None else obj.updateable
    operation = "created" if key is None else "updated"
    body: dict[str, Any] = {"attributes": {"type": obj.api_name}}
    if key is not None:
        try:
            body["id"] = salesforce_id(key)
        except ValueError as exc:
            raise InvalidInput(str(exc), field="id") from None
    for name, value in values.items():
        if name == "id":
            continue  # the key is the record's id
        if name not in obj.fields:
            raise InvalidInput(f"{obj.api_name} has no field {name!r}", field=name)
        if name not in allowed:
            raise InvalidInput(f"field {obj.fields[name]} of {obj.api_name} cannot be {operation}"
                               " in Salesforce", field=name)
        try:
            body[obj.fields[name]] = obj.picklist_value(name, value) if (
                name in obj.picklists and value is not None) else _write_value(
                obj.field_types[name], value)
        except ValueError as exc:
            raise InvalidInput(f"field {obj.fields[name]} of {obj.api_name}: {exc}",
                               field=name) from None
    return body


def _write_value(field_type: str, value: Any) -> Any:
    if value is None:
        return None
    if field_type == "date":
        return datetime_text(value)[:10]
    if field_type == "datetime":
        return datetime_text(value)
    if field_type == "reference":
        return salesforce_id(value)
    return value


# ----------------------------------------------------------------- changes


@dataclass
class UpdatedIds:
    """A getUpdated or getDeleted answer: the ids and the end of the window they cover."""

    ids: list[str]  # server keys
    latest_date_covered: str  # stored form: the start of the next window
    earliest_date_available: str | None = None  # getDeleted: older deletions are gone


def updated_ids(body: dict[str, Any]) -> UpdatedIds:
    """A getUpdated answer (`ids`, `latestDateCovered`)."""
    return UpdatedIds([_answered_id(i) for i in body.get("ids") or []],
                      _answered_time(body, "latestDateCovered"))


def deleted_ids(body: dict[str, Any]) -> UpdatedIds:
    """A getDeleted answer (`deletedRecords`, `earliestDateAvailable`, `latestDateCovered`)."""
    ids = [_answered_id(item.get("id")) for item in body.get("deletedRecords") or []]
    earliest = body.get("earliestDateAvailable")
    return UpdatedIds(ids, _answered_time(body, "latestDateCovered"),
                      datetime_text(earliest) if earliest else None)


def _answered_id(value: Any) -> str:
    try:
        return salesforce_id(value)
    except ValueError as exc:
        raise BackendError(f"Salesforce answered an invalid id: {exc}") from None


def _answered_time(body: dict[str, Any], name: str) -> str:
    try:
        return datetime_text(body.get(name))
    except ValueError:
        raise BackendError(f"Salesforce's answer has no valid {name}") from None


# ------------------------------------------------------------------ writes


def collection_results(body: Any, count: int) -> list[tuple[WriteResult, str | None]]:
    """sObject Collections results, in request order: (result, the record's server key or None).

    A success is "ok" (its `id` the key of a created record); a record the
    server does not have is "missing"; any other error (including the rollback
    of an allOrNone request) is "error" with Salesforce's codes and messages.
    """
    if not isinstance(body, list) or len(body) != count:
        raise BackendError(f"Salesforce answered {len(body) if isinstance(body, list) else 'no'}"
                           f" results to {count} records")
    results = []
    for item in body:
        key = item.get("id")
        key = _answered_id(key) if key else None
        if item.get("success") is True:
            results.append((WriteResult("ok"), key))
            continue
        errors = [e for e in item.get("errors") or [] if isinstance(e, dict)]
        codes = {str(e.get("statusCode")) for e in errors}
        status = "missing" if codes and codes <= MISSING_ERROR_CODES else "error"
        results.append((WriteResult(status, message=_messages(errors, "statusCode")), key))
    return results


# -------------------------------------------------------- limits and errors


@dataclass
class LimitInfo:
    """The `Sforce-Limit-Info` header: API requests used and allowed in the last 24 hours."""

    used: int
    limit: int
    others: dict[str, tuple[int, int]] = field(default_factory=dict)  # e.g. api-bursts

    @property
    def remaining(self) -> int:
        """Requests left before REQUEST_LIMIT_EXCEEDED."""
        return max(self.limit - self.used, 0)


_USAGE_RE = re.compile(r"\s*([\w-]+)=(\d+)/(\d+)")


def limit_info(header: str | None) -> LimitInfo | None:
    """The parsed `Sforce-Limit-Info` value ("api-usage=18/5000; ..."); None without api-usage."""
    if not header:
        return None
    usages = {}
    for part in header.split(";"):
        match = _USAGE_RE.match(part)
        if match:
            usages[match[1]] = (int(match[2]), int(match[3]))
    if "api-usage" not in usages:
        return None
    used, limit = usages.pop("api-usage")
    return LimitInfo(used, limit, usages)


def error_from_answer(status: int, body: Any) -> BackendError:
    """The error of a failed request: CredentialsRefused for refused sessions or logins.

    `body` is the decoded answer: REST's `[{"errorCode", "message"}]` or an
    OAuth token endpoint's `{"error", "error_description"}`.
    """
    if isinstance(body, dict) and "error" in body:  # OAuth 2.0 token endpoint
        text = f"{body['error']}: {body.get('error_description') or ''}".strip(": ")
        refused = status == 401 or str(body["error"]) in OAUTH_REFUSALS
        return (CredentialsRefused if refused else BackendError)(f"Salesforce refused: {text}")
    errors = [e for e in body if isinstance(e, dict)] if isinstance(body, list) else []
    if not errors:
        text = body if isinstance(body, str) else ""
        return (CredentialsRefused if status == 401 else BackendError)(
            f"Salesforce answered HTTP {status}{': ' + text[:200] if text else ''}")
    codes = {str(e.get("errorCode")) for e in errors}
    refused = status == 401 or bool(codes & AUTH_ERROR_CODES)
    return (CredentialsRefused if refused else BackendError)(
        f"Salesforce answered HTTP {status}: {_messages(errors, 'errorCode')}")


def _messages(errors: list[dict[str, Any]], code_key: str) -> str:
    """'CODE: message (fields: A, B); ...' of Salesforce error objects."""
    parts = []
    for error in errors:
        text = f"{error.get(code_key)}: {error.get('message') or ''}".rstrip(": ")
        if error.get("fields"):
            text += f" (fields: {', '.join(map(str, error['fields']))})"
        parts.append(text)
    return "; ".join(parts) or "no reason given"
