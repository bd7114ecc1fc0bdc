"""$filter to SQL: odata-query parses, this visitor emits a WHERE clause with bound values.

Every property is looked up in the entity's metadata before any SQL is made,
column names come only from the metadata, and every literal becomes a `?`
parameter converted to the stored form of the property it is compared with
(GUIDs lower-case, date-times as UTC text to the second, booleans as 0/1).
Text compares case-insensitively, both sides folded (portal.orgs.types.fold_text).
"""

import re
from collections.abc import Mapping
from typing import Any

from odata_query import ast
from odata_query.exceptions import ODataException
from odata_query.grammar import ODataLexer, ODataParser
from odata_query.visitor import NodeVisitor

from portal.orgs.metadata import Attribute, Entity
from portal.orgs.types import FOLD_SQL, TYPES, fold_text
from portal.web.odata import query_functions
from portal.web.odata.messages import ProtocolError, bad_request

MAX_FILTER_LENGTH = 8192
# Dataverse names a lookup's GUID property _{lookup}_value; accept that spelling too.
LOOKUP_VALUE_RE = re.compile(r"^_([a-z0-9_]+)_value$")
COMPARATORS = {ast.Eq: "=", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">",
               ast.GtE: ">="}
MIRRORED = {ast.Lt: ast.Gt(), ast.LtE: ast.GtE(), ast.Gt: ast.Lt(), ast.GtE: ast.LtE()}
TEXT_FUNCTIONS = {"tolower": "lower", "toupper": "upper", "trim": "trim"}
DATE_PARTS = {"year": (1, 4), "month": (6, 2), "day": (9, 2), "hour": (12, 2),
              "minute": (15, 2), "second": (18, 2)}
LIKE_FUNCTIONS = {"contains": ("%", "%"), "startswith": ("", "%"), "endswith": ("%", "")}
# The literals a value of each Edm type may be written as (GUIDs and date-times also quoted).
LITERALS: dict[str, tuple[type[ast._Node], ...]] = {
    "Edm.String": (ast.String,),
    "Edm.Int32": (ast.Integer,),
    "Edm.Int64": (ast.Integer,),
    "Edm.Decimal": (ast.Integer, ast.Float),
    "Edm.Double": (ast.Integer, ast.Float),
    "Edm.Boolean": (ast.Boolean,),
    "Edm.Guid": (ast.GUID, ast.String),
    "Edm.DateTimeOffset": (ast.Date, ast.DateTime, ast.String),
}


class Expr:
    """A piece of SQL, the attribute type it has (None for literals) and its parameters.

    `name` is the property a bare property reference names, for messages.
    """

    def __init__(self, sql: str, kind: str | None, params: list[Any],
                 literal: ast._Node | None = None, name: str | None = None) -> None:
        self.sql = sql
        self.kind = kind
        self.params = params
        self.literal = literal
        self.name = name


def parse_filter(text: str, entity: Entity, *, dataverse_functions: bool = False,
                 aliases: Mapping[str, str] | None = None) -> tuple[str, list[Any]]:
    """Turn a $filter expression into (SQL condition, parameters) for one entity.

    `dataverse_functions`: Dataverse's query functions (portal.web.odata.query_functions)
    and parameter aliases (`aliases`, the query's @name=value options) are served;
    otherwise the functions are refused with a 400 that says where they are.
    """
    if len(text) > MAX_FILTER_LENGTH:
        raise bad_request(f"$filter is longer than {MAX_FILTER_LENGTH} characters", "$filter")
    try:
        parsed = query_functions.prepare(text, aliases) if dataverse_functions else text
        tree = ODataParser().parse(ODataLexer().tokenize(parsed))
    except ODataException as exc:
        if not dataverse_functions and NOT_HERE_RE.search(text):
            raise not_here() from None
        raise bad_request(f"$filter is not a valid expression: {exc}", "$filter") from None
    if tree is None:
        raise bad_request("$filter is empty", "$filter")
    expr = SqlFilter(entity, dataverse_functions).visit(tree)
    if expr.kind != "boolean":
        raise bad_request("$filter must be a condition (true or false)", "$filter")
    return expr.sql, expr.params


NOT_HERE_RE = re.compile(r"Microsoft\.Dynamics\.CRM\.\w+\s*\(")


def not_here() -> ProtocolError:
    """The Org API's refusal of Dataverse's query functions."""
    return bad_request("$filter: Microsoft.Dynamics.CRM query functions are Dataverse's: they "
                       "are served at the org's Dataverse Web API root (/dataverse/{org}/api/"
                       "data/v9.2/); here use 'in (...)', ge, le and the like", "$filter")


class SqlFilter(NodeVisitor):
    """Visitor over odata-query's AST that builds parameterised SQLite conditions."""

    def __init__(self, entity: Entity, dataverse_functions: bool = False) -> None:
        self.entity = entity
        self.attributes = {a.logicalname: a for a in entity.attributes}
        self.dataverse_functions = dataverse_functions

    def generic_visit(self, node: ast._Node) -> Expr:
        raise ProtocolError(501, "NotImplemented",
                            f"$filter: {type(node).__name__} is not supported")

    # --- names and literals -------------------------------------------
    def attribute(self, name: str) -> Attribute:
        """The attribute a $filter names; 400 when the entity has none by that name."""
        attr = self.attributes.get(name)
        match = LOOKUP_VALUE_RE.match(name)
        if attr is None and match:
            attr = self.attributes.get(match.group(1))
            if attr is not None and attr.type != "lookup":
                attr = None
        if attr is None:
            raise bad_request(f"$filter: {self.entity.logicalname} has no property {name!r}",
                              "$filter")
        return attr

    def visit_Identifier(self, node: ast.Identifier) -> Expr:
        if node.namespace:
            raise bad_request(f"$filter: unknown name {'.'.join(node.namespace)}.{node.name}",
                              "$filter")
        attr = self.attribute(node.name)
        return Expr(f"[{attr.logicalname}]", attr.type, [], name=attr.logicalname)

    def visit_Attribute(self, node: ast.Attribute) -> Expr:
        raise ProtocolError(501, "NotImplemented",
                            "$filter: navigation paths are not supported; filter on the "
                            "lookup's GUID property instead")

    def _literal(self, node: ast._Node) -> Expr:
        return Expr("?", None, [], literal=node)

    visit_Null = visit_Integer = visit_Float = visit_Boolean = visit_String = _literal
    visit_Date = visit_DateTime = visit_GUID = _literal

    # --- operators ----------------------------------------------------
    def visit_BoolOp(self, node: ast.BoolOp) -> Expr:
        left, right = self.condition(node.left), self.condition(node.right)
        op = "AND" if isinstance(node.op, ast.And) else "OR"
        return Expr(f"({left.sql} {op} {right.sql})", "boolean", left.params + right.params)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> Expr:
        if isinstance(node.op, ast.Not):
            inner = self.condition(node.operand)
            return Expr(f"(NOT {inner.sql})", "boolean", inner.params)
        if isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Integer | ast.Float):
            return self._literal(type(node.operand)(val="-" + node.operand.val))
        raise ProtocolError(501, "NotImplemented", "$filter: this operator is not supported")

    def condition(self, node: ast._Node) -> Expr:
        """A sub-expression that must be true/false (a boolean property counts)."""
        expr = self.visit(node)
        if expr.kind == "boolean":
            if expr.literal is not None:
                return Expr("?", "boolean", [self.value(expr.literal, "boolean")])
            return expr
        raise bad_request("$filter: and/or/not need conditions on both sides", "$filter")

    def visit_Compare(self, node: ast.Compare) -> Expr:
        if isinstance(node.comparator, ast.In):
            return self.in_list(self.visit(node.left), node.right)
        left, right = self.visit(node.left), self.visit(node.right)
        op = node.comparator
        if left.literal is not None and right.literal is None:
            left, right = right, left
            op = MIRRORED.get(type(op), op)
        kind = left.kind
        if kind is None:
            raise bad_request("$filter: a comparison needs a property on one side", "$filter")
        sql_op = COMPARATORS.get(type(op))
        if sql_op is None:
            raise ProtocolError(501, "NotImplemented", "$filter: unsupported comparison")
        if right.literal is not None:
            if isinstance(right.literal, ast.Null):
                if sql_op not in ("=", "!="):
                    raise bad_request("$filter: null can only be compared with eq or ne",
                                      "$filter")
                return Expr(f"({left.sql} IS {'NOT ' if sql_op == '!=' else ''}NULL)",
                            "boolean", left.params)
            value = self.value(right.literal, kind, left.name)
            if is_text(kind):
                return Expr(f"({fold(left.sql)} {sql_op} ?)", "boolean",
                            left.params + [fold_text(value)])
            return Expr(f"({left.sql} {sql_op} ?)", "boolean", left.params + [value])
        if not compatible(kind, right.kind):
            raise bad_request(f"$filter: cannot compare {kind} with {right.kind}", "$filter")
        if is_text(kind):
            left, right = (Expr(fold(e.sql), e.kind, e.params) for e in (left, right))
        # ne between columns must be true when exactly one side is null, as OData says.
        if sql_op == "!=":
            return Expr(f"({left.sql} IS NOT {right.sql})", "boolean", left.params + right.params)
        if sql_op == "=":
            return Expr(f"({left.sql} IS {right.sql})", "boolean", left.params + right.params)
        return Expr(f"({left.sql} {sql_op} {right.sql})", "boolean", left.params + right.params)

    def in_list(self, left: Expr, right_node: ast._Node) -> Expr:
        """`property in (a, b, c)`."""
        if left.kind is None or not isinstance(right_node, ast.List):
            raise bad_request("$filter: 'in' needs a property and a list of values", "$filter")
        values = [self.value(item, left.kind, left.name) for item in right_node.val]
        if not values:
            return Expr("(0)", "boolean", [])
        marks = ",".join("?" * len(values))
        if is_text(left.kind):
            return Expr(f"({fold(left.sql)} IN ({marks}))", "boolean",
                        left.params + [fold_text(v) for v in values])
        return Expr(f"({left.sql} IN ({marks}))", "boolean", left.params + values)

    def visit_Call(self, node: ast.Call) -> Expr:
        if query_functions.is_query_function(node):
            if not self.dataverse_functions:
                raise not_here()
            sql, params = query_functions.call_sql(
                node, self.attribute, lambda text, attr: self.value(
                    ast.String(val=text), attr.type, attr.logicalname, text=True))
            return Expr(sql, "boolean", params)
        name = node.func.name
        args = [self.visit(a) for a in node.args]
        if name in LIKE_FUNCTIONS:
            if len(args) != 2 or not is_text(args[0].kind) or \
                    not isinstance(args[1].literal, ast.String):
                raise bad_request(f"$filter: {name}(text property, 'text') expected", "$filter")
            before, after = LIKE_FUNCTIONS[name]
            text = fold_text(args[1].literal.val)
            pattern = before + re.sub(r"([\\%_])", r"\\\1", text) + after
            return Expr(f"({fold(args[0].sql)} LIKE ? ESCAPE '\\')", "boolean",
                        args[0].params + [pattern])
        if name in TEXT_FUNCTIONS and len(args) == 1 and is_text(args[0].kind):
            return Expr(f"{TEXT_FUNCTIONS[name]}({args[0].sql})", "string", args[0].params)
        if name == "length" and len(args) == 1 and is_text(args[0].kind):
            return Expr(f"length({args[0].sql})", "integer", args[0].params)
        if name in DATE_PARTS and len(args) == 1 and group(args[0].kind) == "datetime":
            start, size = DATE_PARTS[name]
            return Expr(f"CAST(substr({args[0].sql}, {start}, {size}) AS INTEGER)", "integer",
                        args[0].params)
        raise ProtocolError(501, "NotImplemented",
                            f"$filter: the function {name}() is not supported here")

    # --- values ---------------------------------------------------------
    def value(self, literal: ast._Node | None, kind: str, name: str | None = None, *,
              text: bool = False) -> Any:
        """A literal converted to the stored form of a property of type `kind` (named `name`).

        `text`: the literal is a string standing for a value of any type (Dataverse's
        PropertyValues are Collection(Edm.String)).
        """
        if literal is None:
            raise bad_request("$filter: expected a value", "$filter")
        try:
            if text and isinstance(literal, ast.String):
                return TYPES[kind].filter_value(literal.val)
            return convert(literal, kind)
        except (ValueError, TypeError, OverflowError):
            of = f" for {name}" if name else ""
            raise bad_request(f"$filter: {literal_text(literal)} is not a valid {kind} value{of}",
                              "$filter") from None


def fold(sql: str) -> str:
    """A text expression as it compares: folded (portal.orgs.types.fold_text)."""
    return f"{FOLD_SQL}({sql})"


def literal_text(node: ast._Node) -> str:
    """How a literal was written, for error messages."""
    return repr(getattr(node, "val", None)) if not isinstance(node, ast.Null) else "null"


def group(kind: str | None) -> str | None:
    """The comparison group of a property type (numbers compare with numbers); None for none."""
    found = TYPES.get(kind) if kind else None
    return found.group if found else None


def is_text(kind: str | None) -> bool:
    """Whether a property type is text (contains(), length() and the like apply)."""
    return group(kind) == "text"


def compatible(a: str | None, b: str | None) -> bool:
    """Whether two property types may be compared."""
    return group(a) is not None and group(a) == group(b)


def convert(node: ast._Node, kind: str) -> Any:
    """Convert one literal node to the stored value of a `kind` property; ValueError if it can't."""
    if isinstance(node, ast.Null):
        return None
    found = TYPES[kind]
    if not isinstance(node, LITERALS[found.edm]):
        raise ValueError(getattr(node, "val", None))
    return found.filter_value(node.val)  # type: ignore[attr-defined]
