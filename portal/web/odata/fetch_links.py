"""FetchXML link-entities on the Dataverse root: tables joined to a fetch.

As Microsoft Learn's "Join tables using FetchXml" has them: <link-entity name
from to link-type="inner|outer" alias> with <attribute>s (or <all-attributes/>)
and <filter>s of its own, many-to-one (from = the linked table's primary id,
to = a lookup) or one-to-many (from = the linked table's lookup, to = the
primary id) or on any two columns that compare. Its columns come back as
`{alias}.{attribute}` (alias defaulting to `{name}{n}`), with
`@OData.Community.Display.V1.AttributeName`, `@Microsoft.Dynamics.CRM.lookuplogicalname`
and formatted values when annotations are asked for. At most 15 link-entities.
Nested link-entities (many-to-many through an intersect) and other link types
answer 501.
"""

from copy import deepcopy
from typing import Any
from xml.etree.ElementTree import Element, tostring

from portal.errors import NotFound
from portal.orgs.metadata import Entity
from portal.orgs.queries import Join
from portal.orgs.types import TYPES
from portal.sync import filters as sync_filters
from portal.web.odata import shapes
from portal.web.odata.filters import parse_filter
from portal.web.odata.messages import ApiRequest, ProtocolError, bad_request
from portal.web.odata.options import logical_name, parse_select

LINK_TYPES = {"inner": False, "outer": True}
MAX_LINKS = 15
ATTRIBUTE_NAME = "OData.Community.Display.V1.AttributeName"


def without_links(element: Element) -> str:
    """The <fetch> text of an <entity> without its link-entities (for its own filters)."""
    copy = deepcopy(element)
    for link in copy.findall("link-entity"):
        copy.remove(link)
    return f"<fetch>{tostring(copy, encoding='unicode')}</fetch>"


def _filter(link: Element, linked: Entity) -> tuple[str, list[Any]]:
    """The link-entity's own <filter>s as a condition on the linked table."""
    entity = Element("entity", {"name": linked.logicalname})
    entity.extend(deepcopy(f) for f in link.findall("filter"))
    found = sync_filters.parse_fetch_filters(f"<fetch>{tostring(entity, encoding='unicode')}"
                                             "</fetch>").get(linked.logicalname)
    text = sync_filters.to_odata(found.check(linked)) if found is not None else ""
    return parse_filter(text, linked) if text else ("", [])


def parse_links(req: ApiRequest, element: Element, entity: Entity
                ) -> list[tuple[str, Join]]:
    """(alias, Join) of each <link-entity> of the fetch's <entity>."""
    links = element.findall("link-entity")
    if len(links) > MAX_LINKS:
        raise bad_request("Number of link entities in query exceeded maximum limit.",
                          "fetchXml")
    entities = req.org.entities()
    out: list[tuple[str, Join]] = []
    for n, link in enumerate(links, start=1):
        name = link.get("name", "")
        linked = entities.get(name)
        if linked is None:
            raise NotFound(f"fetchXml: <link-entity name={name!r}>: no such entity",
                           field="fetchXml")
        kind = link.get("link-type", "inner")
        if kind not in LINK_TYPES:
            raise ProtocolError(501, "NotImplemented", f"fetchXml: link-type={kind!r} is not "
                                f"served (served: {', '.join(LINK_TYPES)})")
        on, to = link.get("from", ""), link.get("to") or entity.primaryidattribute
        on_attr, to_attr = linked.attribute(on), entity.attribute(to)
        if on_attr is None or to_attr is None:
            raise bad_request(f"fetchXml: <link-entity name={name!r} from={on!r} to={to!r}>: "
                              f"from names an attribute of {name}, to one of "
                              f"{entity.logicalname}", "fetchXml")
        if TYPES[on_attr.type].group != TYPES[to_attr.type].group:
            raise bad_request(f"fetchXml: <link-entity name={name!r}>: {on} ({on_attr.type}) "
                              f"and {to} ({to_attr.type}) do not compare", "fetchXml")
        chosen, everything = [], False
        for child in link:
            if child.tag == "attribute":
                chosen.append(logical_name(linked, child.get("name", "")))
            elif child.tag == "all-attributes":
                everything = True
            elif child.tag == "link-entity":
                raise ProtocolError(501, "NotImplemented", "fetchXml: nested link-entity is "
                                                           "not served")
            elif child.tag != "filter":
                raise ProtocolError(501, "NotImplemented", f"fetchXml: <{child.tag}> in a "
                                                           "link-entity is not served")
        names = (parse_select(None, linked) if everything else
                 parse_select(",".join(chosen), linked)[1:] if chosen else [])
        alias = link.get("alias") or f"{name}{n}"
        where, params = _filter(link, linked)
        out.append((alias, Join(linked, on, to, LINK_TYPES[kind], names,
                                {a: f"{alias}.{a}" for a in names}, where, params)))
    if len({alias for alias, _ in out}) != len(out):
        raise bad_request("fetchXml: two link-entities have the same alias", "fetchXml")
    return out


def linked_columns(alias: str, join: Join, values: dict[str, Any] | None,
                   shape: shapes.Shape) -> dict[str, Any]:
    """A joined row's columns as Dataverse names them, with their annotations."""
    out: dict[str, Any] = {}
    if values is None:
        return out
    values.pop("@odata.etag", None)
    for name in join.names:
        key, value = f"{alias}.{name}", values.get(f"{alias}.{name}")
        if value is None:
            continue
        attr = join.entity.attribute(name)
        assert attr is not None
        if shape.wants(ATTRIBUTE_NAME):
            out[f"{key}@{ATTRIBUTE_NAME}"] = name
        if shape.wants(shapes.LOOKUP_TARGET):
            out[f"{key}@{shapes.LOOKUP_TARGET}"] = join.entity.logicalname
        formatted = shapes.formatted_value(attr, value)
        if formatted is not None and shape.wants(shapes.FORMATTED):
            out[f"{key}@{shapes.FORMATTED}"] = formatted
        out[key] = value
    return out
