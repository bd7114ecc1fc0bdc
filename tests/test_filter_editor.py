"""The Sync Filter editor's rows: a FetchXML filter drawn as rows and read back unchanged."""

import pytest

from portal.errors import InvalidInput
from portal.orgs.templates import template_entities
from portal.sync import filters
from portal.web.admin import filter_editor

ACCOUNT = next(e for e in template_entities("sales") if e.logicalname == "account")
XML = ('<filter type="and"><condition attribute="name" operator="like" value="A%" />'
       '<filter type="or"><condition attribute="industrycode" operator="in"><value>1</value>'
       '<value>2</value></condition><condition attribute="creditonhold" operator="null" />'
       '</filter></filter>')


def as_form(tree: filter_editor.EditGroup) -> dict[str, str]:
    """The fields a browser posts for these rows."""
    form = {}
    for row in filter_editor.rows(tree):
        node = row.node
        if isinstance(node, filter_editor.EditGroup):
            form[f"t-{row.path}"] = node.type
        else:
            form.update({f"a-{row.path}": node.attribute, f"o-{row.path}": node.operator,
                         f"v-{row.path}": node.value})
    return form


def test_filter_editor_round_trips_a_nested_filter() -> None:
    tree = filter_editor.from_filter(filters.parse_filter(XML))
    assert [(r.path, r.depth, r.is_group) for r in filter_editor.rows(tree)] == [
        ("0", 0, True), ("0.0", 1, False), ("0.1", 1, True), ("0.1.0", 2, False),
        ("0.1.1", 2, False)]
    back = filter_editor.from_form(as_form(tree))
    built, errors = filter_editor.to_filter(back, ACCOUNT)
    assert errors == {} and built is not None and built.to_xml() == XML


def test_filter_editor_adds_and_removes_rows() -> None:
    tree = filter_editor.from_filter(None)
    filter_editor.edit(tree, "add-group:0")
    filter_editor.edit(tree, "add-condition:0.0")
    assert [r.path for r in filter_editor.rows(tree)] == ["0", "0.0", "0.0.0", "0.0.1"]
    filter_editor.edit(tree, "remove:0.0.0")
    assert [r.path for r in filter_editor.rows(tree)] == ["0", "0.0", "0.0.0"]


@pytest.mark.parametrize("command", ["remove:0.5", "add-condition:0.0", "explode:0", "remove:x"])
def test_filter_editor_refuses_a_command_for_no_row(command: str) -> None:
    tree = filter_editor.from_filter(filters.parse_filter(
        '<filter><condition attribute="name" operator="null"/></filter>'))
    with pytest.raises(InvalidInput):
        filter_editor.edit(tree, command)


@pytest.mark.parametrize("form", [
    {"t-0": "and", "a-0.x": "name"},
    {"t-0": "and", "a-0.0.0": "name"},  # a condition under a row that is not a group
    {"t-" + ".".join(["0"] * 30): "and"},
])
def test_filter_editor_refuses_a_form_that_is_no_tree(form: dict[str, str]) -> None:
    with pytest.raises(InvalidInput):
        filter_editor.from_form(form)
