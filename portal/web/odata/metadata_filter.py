"""`$filter` on metadata (EntityDefinitions, Attributes, relationships), as Dataverse serves it.

Dataverse's metadata queries accept comparisons of properties with literals
joined by `and`, `or`, `not` and parentheses — no functions, no lambdas. That is
what is served here: `LogicalName eq 'account'`, `IsPrivate eq false and
(EntitySetName eq 'accounts' or IsIntersect eq true)`, `IsCustomizable/Value eq
true`, `AttributeType eq Microsoft.Dynamics.CRM.AttributeTypeCode'Picklist'`.
A filter is compiled once into a predicate over the definitions' JSON objects.
Text compares case-insensitively, as metadata names do in Dataverse.
Anything else answers 501 naming what is not served.
"""

import re
from collections.abc import Callable
from typing import Any

from portal.web.odata.messages import ProtocolError, bad_request

Predicate = Callable[[dict[str, Any]], bool]

TOKEN_RE = re.compile(r"""\s*(?:
    (?P<string>'(?:[^']|'')*')
  | (?P<enum>[A-Za-z][\w.]*'(?:[^']|'')*')
  | (?P<guid>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b)
  | (?P<number>-?\d+(?:\.\d+)?\b)
  | (?P<name>[A-Za-z_]\w*(?:/[A-Za-z_]\w*)*)
  | (?P<punct>[(),:])
)""", re.X)
COMPARISONS = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
}
LITERAL_NAMES = {"true": True, "false": False, "null": None}
MISSING = object()


def not_served(what: str) -> ProtocolError:
    """501 for a metadata $filter construct this server does not evaluate."""
    return ProtocolError(501, "NotImplemented",
                         f"$filter on metadata: {what} is not served (only comparisons of "
                         "properties with literals, joined by and, or, not)")


class _Parser:
    def __init__(self, text: str, properties: set[str], type_name: str) -> None:
        self.tokens = self._tokenize(text)
        self.pos = 0
        self.properties = properties
        self.type_name = type_name

    @staticmethod
    def _tokenize(text: str) -> list[tuple[str, str]]:
        tokens = []
        pos = 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            match = TOKEN_RE.match(text, pos)
            if match is None or match.end() == pos:
                raise bad_request(f"$filter: cannot read {text[pos:pos + 20].strip()!r}",
                                  "$filter")
            kind = match.lastgroup or ""
            tokens.append((kind, match.group(kind)))
            pos = match.end()
        return tokens

    def peek(self, offset: int = 0) -> tuple[str, str]:
        index = self.pos + offset
        return self.tokens[index] if index < len(self.tokens) else ("end", "")

    def take(self) -> tuple[str, str]:
        token = self.peek()
        self.pos += 1
        return token

    def word(self, *words: str) -> bool:
        kind, value = self.peek()
        if kind == "name" and value in words:
            self.pos += 1
            return True
        return False

    def parse(self) -> Predicate:
        if not self.tokens:
            raise bad_request("$filter is empty", "$filter")
        predicate = self.or_()
        if self.peek()[0] != "end":
            raise bad_request(f"$filter: unexpected {self.peek()[1]!r}", "$filter")
        return predicate

    def or_(self) -> Predicate:
        parts = [self.and_()]
        while self.word("or"):
            parts.append(self.and_())
        return parts[0] if len(parts) == 1 else lambda d: any(p(d) for p in parts)

    def and_(self) -> Predicate:
        parts = [self.unary()]
        while self.word("and"):
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else lambda d: all(p(d) for p in parts)

    def unary(self) -> Predicate:
        if self.word("not"):
            inner = self.unary()
            return lambda d: not inner(d)
        if self.peek() == ("punct", "("):
            self.take()
            inner = self.or_()
            if self.take() != ("punct", ")"):
                raise bad_request("$filter: a parenthesis is not closed", "$filter")
            return inner
        return self.comparison()

    def operand(self) -> tuple[str, Any]:
        """("property", path) or ("literal", value)."""
        kind, value = self.take()
        if kind == "name" and self.peek() == ("punct", "("):
            raise not_served(f"the function {value.rsplit('/', 1)[-1]}()")
        if kind == "name" and value in LITERAL_NAMES:
            return "literal", LITERAL_NAMES[value]
        if kind == "name":
            head = value.split("/", 1)[0]
            if head not in self.properties:
                raise not_served(f"the property {head!r} of {self.type_name}")
            return "property", value.split("/")
        if kind == "string":
            return "literal", value[1:-1].replace("''", "'")
        if kind == "enum":
            # Microsoft.Dynamics.CRM.AttributeTypeCode'Picklist': the member's name.
            return "literal", value[value.index("'") + 1:-1].replace("''", "'")
        if kind == "guid":
            return "literal", value.lower()
        if kind == "number":
            return "literal", float(value) if "." in value else int(value)
        raise bad_request(f"$filter: expected a property or a value, not {value or 'the end'!r}",
                          "$filter")

    def comparison(self) -> Predicate:
        left = self.operand()
        kind, op = self.take()
        if kind != "name" or op not in COMPARISONS:
            if kind == "name" and op in ("has", "in", "add", "sub", "mul", "div", "mod"):
                raise not_served(f"the operator {op}")
            raise bad_request(f"$filter: expected eq, ne, gt, ge, lt or le, not {op!r}",
                              "$filter")
        right = self.operand()
        compare = COMPARISONS[op]

        def value(operand: tuple[str, Any], data: dict[str, Any]) -> Any:
            if operand[0] == "literal":
                return operand[1]
            current: Any = data
            for key in operand[1]:
                current = current.get(key, MISSING) if isinstance(current, dict) else MISSING
            return None if current is MISSING else current

        def predicate(data: dict[str, Any]) -> bool:
            a, b = value(left, data), value(right, data)
            if isinstance(a, str) and isinstance(b, str):
                a, b = a.casefold(), b.casefold()
            if op in ("eq", "ne"):
                return bool(compare(a, b))
            if isinstance(a, bool) or isinstance(b, bool) or not (
                    isinstance(a, int | float) and isinstance(b, int | float)):
                return False
            return bool(compare(a, b))

        return predicate


def compile_filter(text: str, properties: set[str], type_name: str) -> Predicate:
    """A predicate for a metadata `$filter`; 400 if malformed, 501 if not served."""
    return _Parser(text, properties, type_name).parse()
