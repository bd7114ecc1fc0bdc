"""Attribute types: one table of what each type stores, accepts, compares as and is called.

Every layer reads TYPES, as sqlite-utils keeps its COLUMN_TYPE_MAPPING in one
place: the org store (SQLite column type, the check of one JSON value and of a
whole column), both filters (the form a FetchXML or OData `$filter` value is
compared in), the OData service (Edm type and facets of `$metadata`) and the
Dataverse metadata (AttributeType and `@odata.type` names, written and read).
A backend for another system adds its type names to the table as a field of
AttributeType with a reverse index (as FROM_DATAVERSE, FROM_SALESFORCE), not a
copy of the table.

The integer bounds, the GUID pattern and the normalisation of GUIDs and
date-times are defined here once; the stored date-time format is
portal.db.TIMESTAMP_FORMAT (the registry's timestamps use it too).
"""

import math
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import NoneType
from typing import TYPE_CHECKING, Any

from portal.db import TIMESTAMP_FORMAT
from portal.errors import InvalidInput

if TYPE_CHECKING:
    from portal.orgs.metadata import Attribute

# Dataverse's Integer and Picklist are Edm.Int32, BigInt is Edm.Int64.
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
GUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# The stored form of a date-time: TIMESTAMP_FORMAT, UTC to the second, within
# Dataverse's range (from 1753, as SQL Server's datetime). Four-digit years also
# keep the text sortable.
DATETIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
FIRST_DATETIME, LAST_DATETIME = "1753-01-01T00:00:00Z", "9999-12-31T23:59:59Z"
# How filters write numbers and flags as text (FetchXML values, OData literals).
INT_RE = re.compile(r"[+-]?\d+")
FLOAT_RE = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
BOOLEANS = {"true": True, "1": True, "false": False, "0": False}

DATAVERSE_NAMESPACE = "Microsoft.Dynamics.CRM"

Coercer = Callable[[Any], Any]
ColumnCheck = Callable[[Sequence[Any]], Sequence[Any]]


class _NoValue:
    def __repr__(self) -> str:
        return "NO_VALUE"


NO_VALUE: Any = _NoValue()  # comparable(): a value that cannot be compared with this type


def invalid(attr: "Attribute", message: str) -> InvalidInput:
    """The refusal of a value of an attribute, naming the attribute as the field."""
    return InvalidInput(f"attribute {attr.logicalname}: {message}", field=attr.logicalname)


# ------------------------------------------------------------ shared rules


def guid_text(value: Any) -> str:
    """A GUID in its stored form (lower case with hyphens); braces allowed; ValueError if none."""
    if type(value) is not str:
        raise ValueError(f"{value!r} is not a GUID")
    if GUID_RE.fullmatch(value):
        return value  # already canonical: the common case
    try:
        return str(uuid.UUID(value.strip().strip("{}")))
    except ValueError:
        raise ValueError(f"{value!r} is not a GUID") from None


def normalize_guid(value: Any, what: str = "id") -> str:
    """Return a GUID in canonical lower-case form, or refuse it naming `what` as the field."""
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a GUID string", field=what)
    try:
        return guid_text(value)
    except ValueError:
        raise InvalidInput(f"{what} {value!r} is not a GUID", field=what) from None


def new_guid() -> str:
    """A new record id, lower-case with hyphens as Dataverse writes them."""
    return str(uuid.uuid4())


def datetime_text(value: Any) -> str:
    """An ISO 8601 date or date-time in the stored form (UTC, to the second, Z); else ValueError.

    A date-time without an offset is UTC, as the store keeps it.
    """
    if type(value) is not str:
        raise ValueError(f"{value!r} is not an ISO 8601 date-time")
    if _canonical_datetime(value):
        return value  # already in the stored form: the common case
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO 8601 date-time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        moment = moment.astimezone(UTC)
    except OverflowError:  # before year 1 or after 9999 once in UTC
        moment = datetime.min.replace(tzinfo=UTC)
    if moment.year < 1753:
        raise ValueError(f"{value!r} is not between {FIRST_DATETIME} and {LAST_DATETIME} (UTC)")
    return moment.strftime(TIMESTAMP_FORMAT)


def _canonical_datetime(value: str) -> bool:
    """True for a valid date-time already in the stored form."""
    if not DATETIME_RE.fullmatch(value) or value < FIRST_DATETIME:
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _number(value: Any) -> float:
    """A finite number from a JSON number or its text (IEEE754Compatible clients send text)."""
    if type(value) is str:
        if not FLOAT_RE.fullmatch(value.strip()):
            raise ValueError(f"{value!r} is not a number")
        value = float(value)
    elif type(value) not in (int, float):
        raise ValueError(f"{value!r} is not a number")
    if not math.isfinite(value):
        raise ValueError(f"{value!r} is not a finite number")
    return float(value)


def _distinct_texts(values: Sequence[Any]) -> set[str] | None:
    """The distinct non-null values when all are text, else None.

    Columns of times and GUIDs repeat values (a batch's createdon, an owner),
    so each distinct value is checked once.
    """
    if not {*map(type, values)} <= {str, NoneType}:
        return None
    distinct = set(values)
    distinct.discard(None)
    return distinct


# ----------------------------------------------------------------- families


class Family:
    """How the values of a group of types are checked, normalised and compared.

    `coercer` checks one JSON value of an attribute and returns its stored form
    (InvalidInput naming the attribute otherwise); `bad_column` tells whether a
    whole column needs that per-value path (False: every value is stored as it
    is); `filter_value` turns a filter's value (text or typed) into the form it
    is compared in (ValueError otherwise); `comparable` puts a record's or a
    checked filter's value into the form the in-memory evaluation compares.
    """

    group = ""  # types of one group may be compared with each other
    text = False  # like, contains(), length() apply
    ordered = True  # lt/le/gt/ge mean something

    def coercer(self, kind: "AttributeType", attr: "Attribute") -> Coercer:
        """The check and normalisation of one JSON value of `attr`."""
        raise NotImplementedError

    def bad_column(self, kind: "AttributeType",
                   attr: "Attribute") -> Callable[[Sequence[Any]], bool]:
        """Whether a column of values needs the value-by-value path (a fast, whole-column test)."""
        raise NotImplementedError

    def filter_value(self, kind: "AttributeType", value: Any) -> Any:
        """A filter value in the form it is compared in; idempotent on that form."""
        raise NotImplementedError

    def comparable(self, value: Any) -> Any:
        """A value in the form the in-memory evaluation of filters compares; NO_VALUE if none."""
        raise NotImplementedError


# How text compares, everywhere a query or filter compares it: case-insensitively,
# as Dataverse's default collation does — sync filters (in memory), FetchXML and
# $filter on both roots (the Dataverse Web API and the Org API, which follows
# Dataverse's conventions, so one sync filter selects the same records through
# either root and on either side of a sync), and metadata $filter. Both sides of a
# comparison are folded by str.casefold (Unicode, not only A-Z); in SQL by the
# function FOLD_SQL, which every org file's connection has (store.open_org).
FOLD_SQL = "fold_text"


def fold_text(value: Any) -> Any:
    """Text in the form it compares in (casefolded); other values as they are."""
    return value.casefold() if isinstance(value, str) else value


class TextFamily(Family):
    """string, memo: text up to the attribute's maxlength; compared case-insensitively."""

    group = "text"
    text = True

    def coercer(self, kind: "AttributeType", attr: "Attribute") -> Coercer:
        limit = attr.maxlength or 0

        def text(v: Any) -> Any:
            if type(v) is not str:
                raise invalid(attr, f"expected text, got {type(v).__name__}")
            if len(v) > limit:
                raise invalid(attr, f"{len(v)} characters, at most {limit} allowed")
            return v

        return text

    def bad_column(self, kind: "AttributeType",
                   attr: "Attribute") -> Callable[[Sequence[Any]], bool]:
        limit = attr.maxlength or 0

        def bad(vs: Sequence[Any]) -> bool:
            # Whole-column passes in C (types, then lengths): text is most of a record.
            if not {*map(type, vs)} <= {str, NoneType}:
                return True
            return max(map(len, filter(None, vs)), default=0) > limit

        return bad

    def filter_value(self, kind: "AttributeType", value: Any) -> Any:
        if not isinstance(value, str):
            raise ValueError(f"expected text, got {value!r}")
        return value

    def comparable(self, value: Any) -> Any:
        return fold_text(value) if isinstance(value, str) else NO_VALUE


class IntegerFamily(Family):
    """integer, bigint, picklist: whole numbers within the type's bounds (picklist: its options)."""

    group = "number"

    def coercer(self, kind: "AttributeType", attr: "Attribute") -> Coercer:
        low, high = kind.bounds or INT64
        allowed = {o.value for o in attr.options} if kind.options else None

        def whole(v: Any) -> Any:
            if type(v) is not int:
                raise invalid(attr, f"expected a whole number, got {type(v).__name__}")
            if not low <= v <= high:
                raise invalid(attr, f"{v} is out of range")
            if allowed is not None and v not in allowed:
                raise invalid(attr, f"{v} is not one of the options {sorted(allowed)}")
            return v

        return whole

    def bad_column(self, kind: "AttributeType",
                   attr: "Attribute") -> Callable[[Sequence[Any]], bool]:
        low, high = kind.bounds or INT64
        allowed = {o.value for o in attr.options} if kind.options else None

        def bad(vs: Sequence[Any]) -> bool:
            if allowed is not None:  # True and 1.0 are in {1}: check the type too
                return any([1 for v in vs
                            if v is not None and (type(v) is not int or v not in allowed)])
            return any([1 for v in vs
                        if v is not None and (type(v) is not int or not low <= v <= high)])

        return bad

    def filter_value(self, kind: "AttributeType", value: Any) -> Any:
        # A filter may name a value no option has: it matches no record, as in Dataverse.
        low, high = kind.bounds or INT64
        if isinstance(value, str) and INT_RE.fullmatch(value.strip()):
            value = int(value)
        if type(value) is not int:
            raise ValueError(f"{value!r} is not a whole number")
        if not low <= value <= high:
            raise ValueError(f"{value} is out of range for {kind.name}")
        return value

    def comparable(self, value: Any) -> Any:
        return _comparable_number(value)


class NumberFamily(Family):
    """decimal, double, money: finite numbers, stored as REAL."""

    group = "number"

    def coercer(self, kind: "AttributeType", attr: "Attribute") -> Coercer:
        def number(v: Any) -> Any:
            if type(v) not in (str, int, float):
                raise invalid(attr, f"expected a number, got {type(v).__name__}")
            try:
                return _number(v)
            except ValueError as exc:
                raise invalid(attr, str(exc)) from None

        return number

    def bad_column(self, kind: "AttributeType",
                   attr: "Attribute") -> Callable[[Sequence[Any]], bool]:
        def bad(vs: Sequence[Any]) -> bool:
            return any([1 for v in vs if v is not None and (
                type(v) not in (int, float) or v != v or v in (math.inf, -math.inf))])

        return bad

    def filter_value(self, kind: "AttributeType", value: Any) -> Any:
        return _number(value)

    def comparable(self, value: Any) -> Any:
        return _comparable_number(value)


def _comparable_number(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return value
    if isinstance(value, str) and FLOAT_RE.fullmatch(value.strip()):
        return float(value)
    return NO_VALUE


class BooleanFamily(Family):
    """boolean: true or false, stored as 1/0; filters also write 1 and 0."""

    group = "boolean"
    ordered = False  # OData 4.0 does not order flags, nor does a user

    def coercer(self, kind: "AttributeType", attr: "Attribute") -> Coercer:
        def flag(v: Any) -> Any:
            if type(v) is not bool:
                raise invalid(attr, f"expected true or false, got {type(v).__name__}")
            return int(v)

        return flag

    def bad_column(self, kind: "AttributeType",
                   attr: "Attribute") -> Callable[[Sequence[Any]], bool]:
        def bad(vs: Sequence[Any]) -> bool:
            return any([1 for v in vs if v is not None and type(v) is not bool])

        return bad

    def filter_value(self, kind: "AttributeType", value: Any) -> Any:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in BOOLEANS:
            return BOOLEANS[value.strip().lower()]
        raise ValueError(f"{value!r} is not true, false, 1 or 0")

    def comparable(self, value: Any) -> Any:
        if isinstance(value, str):
            return BOOLEANS.get(value.strip().lower(), NO_VALUE)
        return bool(value)  # the store keeps booleans as 0/1


class DateTimeFamily(Family):
    """datetime: ISO 8601, stored as UTC text to the second with a Z (sortable as text)."""

    group = "datetime"

    def coercer(self, kind: "AttributeType", attr: "Attribute") -> Coercer:
        def moment(v: Any) -> Any:
            if type(v) is not str:
                raise invalid(attr, f"expected an ISO 8601 date-time, got {type(v).__name__}")
            try:
                return datetime_text(v)
            except ValueError as exc:
                raise invalid(attr, str(exc)) from None

        return moment

    def bad_column(self, kind: "AttributeType",
                   attr: "Attribute") -> Callable[[Sequence[Any]], bool]:
        def bad(vs: Sequence[Any]) -> bool:
            distinct = _distinct_texts(vs)
            return distinct is None or not all(map(_canonical_datetime, distinct))

        return bad

    def filter_value(self, kind: "AttributeType", value: Any) -> Any:
        return datetime_text(value)

    def comparable(self, value: Any) -> Any:
        try:
            return datetime_text(value)
        except ValueError:
            return NO_VALUE


class GuidFamily(Family):
    """uniqueidentifier, lookup: GUIDs, stored lower case with hyphens."""

    group = "guid"
    ordered = False  # ordering GUIDs means nothing to a user; OData 4.0 does not define it

    def coercer(self, kind: "AttributeType", attr: "Attribute") -> Coercer:
        name = attr.logicalname
        return lambda v: normalize_guid(v, name)

    def bad_column(self, kind: "AttributeType",
                   attr: "Attribute") -> Callable[[Sequence[Any]], bool]:
        match = GUID_RE.fullmatch

        def bad(vs: Sequence[Any]) -> bool:
            distinct = _distinct_texts(vs)
            return distinct is None or not all(map(match, distinct))

        return bad

    def filter_value(self, kind: "AttributeType", value: Any) -> Any:
        return guid_text(value)

    def comparable(self, value: Any) -> Any:
        try:
            return guid_text(value)
        except ValueError:
            return NO_VALUE


TEXT, INTEGER, NUMBER = TextFamily(), IntegerFamily(), NumberFamily()
BOOLEAN, DATETIME, GUID = BooleanFamily(), DateTimeFamily(), GuidFamily()


# -------------------------------------------------------------------- table


@dataclass(frozen=True)
class AttributeType:
    """One attribute type: how it is stored, checked, compared and named by other systems."""

    name: str
    column: str  # SQLite column type
    family: Family
    edm: str  # OData Edm type in $metadata
    dataverse: str  # Dataverse AttributeType (AttributeTypeName is this + "Type")
    dataverse_metadata: str  # @odata.type of its AttributeMetadata, without the namespace
    bounds: tuple[int, int] | None = None  # whole numbers
    # Which properties of an Attribute definition apply to the type:
    maxlength: int | None = None  # text: the default maxlength
    precision: int | None = None  # decimal places: the default precision
    options: bool = False  # picklist: values must be one of the attribute's options
    targets: bool = False  # lookup: the entities it points to
    # Further Dataverse AttributeTypes and AttributeMetadata types read as this type.
    dataverse_reads: tuple[str, ...] = ()
    # Salesforce field types (describe's `type`) read as this type; see from_salesforce.
    salesforce: tuple[str, ...] = ()

    @property
    def dataverse_type_name(self) -> str:
        """Dataverse's AttributeTypeName value ("StringType")."""
        return self.dataverse + "Type"

    @property
    def odata_type(self) -> str:
        """The `@odata.type` of this type's Dataverse AttributeMetadata."""
        return f"#{DATAVERSE_NAMESPACE}.{self.dataverse_metadata}"

    @property
    def group(self) -> str:
        """Types of one group may be compared with each other (numbers with numbers)."""
        return self.family.group

    @property
    def text(self) -> bool:
        """Whether text operations (like, contains, length) apply."""
        return self.family.text

    @property
    def ordered(self) -> bool:
        """Whether lt/le/gt/ge apply."""
        return self.family.ordered

    def coercer(self, attr: "Attribute") -> Coercer:
        """A function turning a JSON value of `attr` into its stored form, or refusing it."""
        return self.family.coercer(self, attr)

    def column_check(self, attr: "Attribute") -> ColumnCheck:
        """A check of a whole column of `attr`'s values (the bulk path); returns stored values.

        The common case (every value already well-typed and canonical) costs a
        pass or two over the column; otherwise the column goes value by value
        through the coercer, which normalizes or raises the precise error.
        """
        bad = self.family.bad_column(self, attr)
        coerce = self.coercer(attr)

        def check(values: Sequence[Any]) -> Sequence[Any]:
            if bad(values):
                return [None if v is None else coerce(v) for v in values]
            return values

        return check

    def filter_value(self, value: Any) -> Any:
        """A filter's value (text or typed) in the form it is compared in; ValueError if none."""
        return self.family.filter_value(self, value)

    def comparable(self, value: Any) -> Any:
        """A value in the form the in-memory evaluation of filters compares; NO_VALUE if none."""
        return self.family.comparable(value)


def _table(*types: AttributeType) -> dict[str, AttributeType]:
    return {t.name: t for t in types}


# Order matters where several of our types share a foreign name: the first one
# listed is the one that name reads as (Edm.String is a string, not a memo).
TYPES = _table(
    AttributeType("uniqueidentifier", "TEXT", GUID, "Edm.Guid",
                  "Uniqueidentifier", "UniqueIdentifierAttributeMetadata",
                  salesforce=("id",)),
    AttributeType("string", "TEXT", TEXT, "Edm.String",
                  "String", "StringAttributeMetadata", maxlength=100,
                  # A multi-select picklist stays text ("a;b", as Salesforce writes it): the
                  # table has no multi-select type. A combobox is free text with suggestions.
                  salesforce=("string", "email", "phone", "url", "multipicklist",
                              "combobox", "encryptedstring")),
    AttributeType("memo", "TEXT", TEXT, "Edm.String",
                  "Memo", "MemoAttributeMetadata", maxlength=2000,
                  salesforce=("textarea",)),
    AttributeType("integer", "INTEGER", INTEGER, "Edm.Int32",
                  "Integer", "IntegerAttributeMetadata", bounds=INT32,
                  salesforce=("int",)),
    AttributeType("bigint", "INTEGER", INTEGER, "Edm.Int64",
                  "BigInt", "BigIntAttributeMetadata", bounds=INT64,
                  salesforce=("long",)),
    # Decimal and money are REAL: SQLite has no decimal type, and Dataverse's
    # precision (at most 10 places) fits a double.
    AttributeType("decimal", "REAL", NUMBER, "Edm.Decimal",
                  "Decimal", "DecimalAttributeMetadata", precision=2,
                  salesforce=("percent",)),
    AttributeType("double", "REAL", NUMBER, "Edm.Double",
                  "Double", "DoubleAttributeMetadata", salesforce=("double",)),
    AttributeType("money", "REAL", NUMBER, "Edm.Decimal",
                  "Money", "MoneyAttributeMetadata", precision=2,
                  salesforce=("currency",)),
    AttributeType("boolean", "INTEGER", BOOLEAN, "Edm.Boolean",
                  "Boolean", "BooleanAttributeMetadata", salesforce=("boolean",)),
    AttributeType("datetime", "TEXT", DATETIME, "Edm.DateTimeOffset",
                  "DateTime", "DateTimeAttributeMetadata",
                  # A Salesforce date is kept as midnight UTC and written back as its date.
                  salesforce=("datetime", "date")),
    AttributeType("picklist", "INTEGER", INTEGER, "Edm.Int32",
                  "Picklist", "PicklistAttributeMetadata", bounds=INT32, options=True,
                  dataverse_reads=("State", "Status", "StateAttributeMetadata",
                                   "StatusAttributeMetadata"),
                  # Salesforce's values are text: salesforce_mapping.option_values numbers them.
                  salesforce=("picklist",)),
    AttributeType("lookup", "TEXT", GUID, "Edm.Guid",
                  "Lookup", "LookupAttributeMetadata", targets=True,
                  dataverse_reads=("Customer", "Owner"), salesforce=("reference",)),
)
ATTRIBUTE_TYPES = tuple(TYPES)


def _index(names_of: Callable[[AttributeType], Iterable[str]]) -> dict[str, AttributeType]:
    """Foreign name -> our type; the first type listed wins a shared name."""
    index: dict[str, AttributeType] = {}
    for kind in TYPES.values():
        for name in names_of(kind):
            index.setdefault(name, kind)
    return index


FROM_DATAVERSE = _index(lambda t: (t.dataverse, t.dataverse_metadata, *t.dataverse_reads))
FROM_EDM = _index(lambda t: (t.edm,))
FROM_SALESFORCE = _index(lambda t: t.salesforce)


def from_dataverse(attribute_type: Any, odata_type: Any = None) -> AttributeType | None:
    """Our type of a Dataverse AttributeMetadata; None for a type we do not model.

    The AttributeType decides when there is one; the `@odata.type`
    ("#Microsoft.Dynamics.CRM.StringAttributeMetadata") when a $select left it out.
    """
    if attribute_type is not None:
        return FROM_DATAVERSE.get(str(attribute_type))
    if isinstance(odata_type, str):
        return FROM_DATAVERSE.get(odata_type.rsplit(".", 1)[-1])
    return None


def from_salesforce(field_type: Any) -> AttributeType | None:
    """Our type of a Salesforce field type (describe's `type`); None for a type we do not model.

    Not modelled, so not synced: compound `address` and `location` (their parts
    are fields of their own), `base64` (files), `time`, `anyType`, `complexvalue`.
    """
    return FROM_SALESFORCE.get(field_type) if isinstance(field_type, str) else None


def from_edm(edm: str) -> AttributeType | None:
    """Our type of an OData Edm type (a CSDL property read by a backend); None if unknown."""
    return FROM_EDM.get(edm)


def edm_facets(attr: "Attribute") -> list[tuple[str, str]]:
    """The facets of an attribute's Edm property: (name, value) in $metadata order."""
    kind = TYPES[attr.type]
    facets = []
    if kind.maxlength is not None and attr.maxlength:
        facets.append(("MaxLength", str(attr.maxlength)))
    if kind.precision is not None:
        facets.append(("Scale", "variable" if attr.precision is None else str(attr.precision)))
    if kind.family is DATETIME:  # date-times are kept to the second
        facets.append(("Precision", "0"))
    return facets
