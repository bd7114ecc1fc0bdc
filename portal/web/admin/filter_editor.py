"""The Sync Filter editor's form: a filter tree as rows of form fields, and back.

The editor works without JavaScript: every row of the tree is a set of
fields named by the row's path ("0" the root group, "0.1" its second child,
...), and each button (add a condition or a group, remove a row, save) posts
the whole form. The page is then drawn again from the tree read back, so
editing needs no script; saving turns the tree into a sync filter
(portal.sync.filters) checked against the entity's metadata.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from portal.errors import InvalidInput
from portal.orgs.metadata import SYSTEM_ATTRIBUTES, Attribute, Entity, system_attributes
from portal.sync import filters
from portal.sync.filters import LIST_OPERATORS, NO_VALUE_OPERATORS, Condition, Filter, Group

OPERATOR_LABELS = {
    "eq": "equals", "ne": "does not equal", "lt": "is less than", "le": "is at most",
    "gt": "is greater than", "ge": "is at least", "like": "is like", "not-like": "is not like",
    "in": "is one of", "not-in": "is none of", "null": "is empty", "not-null": "is not empty",
}
MAX_VALUE_LENGTH = 4000


@dataclass
class EditCondition:
    """A condition as typed: the value is text (a comma-separated list for in / not-in)."""

    attribute: str = ""
    operator: str = "eq"
    value: str = ""


@dataclass
class EditGroup:
    """An and/or group being edited."""

    type: str = "and"
    children: list["EditGroup | EditCondition"] = field(default_factory=list)


@dataclass
class Row:
    """One line of the editor: a group header or a condition, at a path, with its error."""

    path: str
    depth: int
    node: EditGroup | EditCondition
    error: str | None = None

    @property
    def is_group(self) -> bool:
        """True for a group's line."""
        return isinstance(self.node, EditGroup)


def from_filter(node: Filter | None) -> EditGroup:
    """The editable tree of a stored filter (an empty and-group when there is none)."""
    if node is None:
        return EditGroup()
    edit = _from_node(node)
    return edit if isinstance(edit, EditGroup) else EditGroup("and", [edit])


def _from_node(node: Filter) -> EditGroup | EditCondition:
    if isinstance(node, Group):
        return EditGroup(node.type, [_from_node(c) for c in node.children])
    assert isinstance(node, Condition)
    values = [_text(v) for v in node.values]
    text = ", ".join(values) if node.operator in LIST_OPERATORS else (values[0] if values else "")
    return EditCondition(node.attribute, node.operator, text)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def from_form(form: Mapping[str, str]) -> EditGroup:
    """Read the tree back from the posted fields (t-PATH: group type; a-, o-, v-PATH: condition).

    Paths are only positions: rows are put in their order, gaps do not matter.
    InvalidInput when the form is not a tree the editor could have drawn.
    """
    paths: dict[tuple[int, ...], EditGroup | EditCondition] = {}
    for key, value in form.items():
        kind, _, path = key.partition("-")
        if kind not in ("t", "a") or not path:
            continue
        try:
            position = tuple(int(p) for p in path.split("."))
        except ValueError:
            raise InvalidInput(f"the filter form has an unknown field {key!r}",
                               field="filter") from None
        if len(position) > filters.MAX_DEPTH + 1 or position[0] != 0:
            raise InvalidInput("the filter is nested too deeply", field="filter")
        if kind == "t":
            paths[position] = EditGroup(value if value in filters.GROUP_TYPES else "and")
        else:
            paths[position] = EditCondition(value.strip(), form.get(f"o-{path}", "eq"),
                                            form.get(f"v-{path}", "")[:MAX_VALUE_LENGTH])
    if len(paths) > filters.MAX_CONDITIONS + 1:
        raise InvalidInput(f"a filter has at most {filters.MAX_CONDITIONS} conditions",
                           field="filter")
    root = paths.get((0,))
    if not isinstance(root, EditGroup):
        return EditGroup()
    for position in sorted(paths):
        if position == (0,):
            continue
        parent = paths.get(position[:-1])
        if not isinstance(parent, EditGroup):
            raise InvalidInput("the filter form's rows do not make a tree", field="filter")
        parent.children.append(paths[position])
    return root


def rows(tree: EditGroup, errors: Mapping[str, str] | None = None) -> list[Row]:
    """The editor's lines, depth first, each with its path and error (if any)."""
    out: list[Row] = []

    def walk(node: EditGroup | EditCondition, path: str, depth: int) -> None:
        out.append(Row(path, depth, node, (errors or {}).get(path)))
        if isinstance(node, EditGroup):
            for i, child in enumerate(node.children):
                walk(child, f"{path}.{i}", depth + 1)

    walk(tree, "0", 0)
    return out


def _node_at(tree: EditGroup, path: str) -> EditGroup | EditCondition | None:
    node: EditGroup | EditCondition = tree
    for part in path.split(".")[1:]:
        if not isinstance(node, EditGroup) or not part.isdigit() or int(part) >= len(
                node.children):
            return None
        node = node.children[int(part)]
    return node if path.split(".")[0] == "0" else None


def edit(tree: EditGroup, command: str) -> EditGroup:
    """Apply one button: add-condition:PATH, add-group:PATH, remove:PATH (in place), refresh."""
    action, _, path = command.partition(":")
    if action == "refresh":  # draw the rows again, typed for the attributes now chosen
        return tree
    node = _node_at(tree, path)
    if node is None:
        raise InvalidInput("that row of the filter does not exist any more", field="filter")
    if action in ("add-condition", "add-group"):
        if not isinstance(node, EditGroup):
            raise InvalidInput("only a group can take rows", field="filter")
        node.children.append(EditCondition() if action == "add-condition"
                             else EditGroup("or", [EditCondition()]))
    elif action == "remove" and path != "0":
        parent = _node_at(tree, path.rsplit(".", 1)[0])
        assert isinstance(parent, EditGroup)
        parent.children.pop(int(path.rsplit(".", 1)[1]))
    else:
        raise InvalidInput(f"unknown filter editor command {command!r}", field="filter")
    return tree


def to_filter(tree: EditGroup, entity: Entity) -> tuple[Filter | None, dict[str, str]]:
    """The tree as a sync filter checked against the entity, or the errors by row path."""
    errors: dict[str, str] = {}

    def build(node: EditGroup | EditCondition, path: str) -> Filter | None:
        if isinstance(node, EditGroup):
            children = [build(c, f"{path}.{i}") for i, c in enumerate(node.children)]
            kept = tuple(c for c in children if c is not None)
            if not kept and path != "0" and not errors:
                errors[path] = "A group needs at least one condition."
            return Group(node.type, kept) if kept else None
        try:
            if not node.attribute:
                raise InvalidInput("choose an attribute", field="filter")
            condition = Condition(node.attribute, node.operator, _values(node))
            return condition.check(entity)
        except InvalidInput as refused:
            message = refused.message.removeprefix("filter: ")
            errors[path] = message[:1].upper() + message[1:]
            return None

    built = build(tree, "0")
    if errors:
        return None, errors
    if built is None:
        return None, {"0": "Add at least one condition, or clear the filter."}
    return built, {}


def _values(node: EditCondition) -> tuple[str, ...]:
    if node.operator in NO_VALUE_OPERATORS:
        return ()
    if node.operator in LIST_OPERATORS:
        return tuple(v.strip() for v in node.value.split(",") if v.strip())
    return (node.value.strip(),)


def attributes(entity: Entity) -> list[Attribute]:
    """The attributes a condition can name: the entity's, its primary id and system columns."""
    found = list(entity.attributes)
    names = {a.logicalname for a in found}
    if entity.primaryidattribute and entity.primaryidattribute not in names:
        found.insert(0, Attribute(entity.primaryidattribute, "uniqueidentifier", "Id"))
    found += [a for a in system_attributes()
              if a.logicalname in SYSTEM_ATTRIBUTES and a.logicalname not in names]
    return found


def input_of(attr: Attribute | None) -> dict[str, Any]:
    """How a value of this attribute is typed: an HTML input type, or a list of choices."""
    if attr is None:
        return {"type": "text"}
    if attr.type == "picklist":
        return {"choices": [(str(o.value), o.label or str(o.value)) for o in attr.options]}
    if attr.type == "boolean":
        return {"choices": [("true", "Yes"), ("false", "No")]}
    if attr.type in ("integer", "bigint"):
        return {"type": "number", "step": "1"}
    if attr.type in ("decimal", "double", "money"):
        return {"type": "number", "step": "any"}
    if attr.type == "datetime":
        return {"type": "text", "placeholder": "2026-01-31T00:00:00Z"}
    return {"type": "text"}
