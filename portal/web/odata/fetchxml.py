"""FetchXML queries on the Dataverse root: GET {set}?fetchXml=<fetch>...</fetch>.

Microsoft Learn, "Use FetchXml to query data" / "Page results using FetchXml":
`<fetch count page top>`, one `<entity>` with `<attribute>`/`<all-attributes>`,
`<order>` and `<filter>`s; paging by page number, each page answering
`@Microsoft.Dynamics.CRM.morerecords` and a `fetchxmlpagingcookie` when
annotations are asked for (as Microsoft's SDK does). The filters are the sync
filters' FetchXML (portal.sync.filters: parsed safely, checked against the
metadata, turned into $filter), so a query means what a sync filter means.
Aggregates: portal.web.odata.fetch_aggregates; link-entities:
portal.web.odata.fetch_links. distinct is not served.
"""

from typing import Any
from urllib.parse import quote
from xml.etree.ElementTree import Element, ParseError

import orjson
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from portal.db import snapshot
from portal.orgs import queries
from portal.orgs.metadata import Entity
from portal.sync import filters as sync_filters
from portal.web.odata import shapes
from portal.web.odata.fetch_aggregates import read_aggregate
from portal.web.odata.fetch_links import linked_columns, parse_links, without_links
from portal.web.odata.filters import parse_filter
from portal.web.odata.messages import (
    ApiRequest,
    ApiResponse,
    ProtocolError,
    bad_request,
    raw_json_response,
)
from portal.web.odata.options import check_options, logical_name, parse_select
from portal.web.odata.prefer import parse_prefer

MORE = "Microsoft.Dynamics.CRM.morerecords"
COOKIE = "Microsoft.Dynamics.CRM.fetchxmlpagingcookie"
MAX_XML_LENGTH = 64 * 1024  # what Dataverse accepts in a $batch body; a URL holds less


def _number(root: Element, name: str, default: int | None, most: int) -> int | None:
    text = root.get(name)
    if text is None:
        return default
    if not text.isdigit() or not 1 <= int(text) <= most:
        raise bad_request(f"fetchXml: {name} must be a whole number from 1 to {most}",
                          "fetchXml")
    return int(text)


def _document(xml: str) -> Element:
    if len(xml) > MAX_XML_LENGTH:
        raise bad_request(f"fetchXml is longer than {MAX_XML_LENGTH} characters", "fetchXml")
    try:
        root: Element = fromstring(xml, forbid_dtd=True)
    except (ParseError, DefusedXmlException) as exc:
        raise bad_request(f"fetchXml is not well-formed XML: {exc}", "fetchXml") from None
    if root.tag != "fetch":
        raise bad_request("fetchXml must be a <fetch> document", "fetchXml")
    if root.get("distinct", "false").lower() == "true":
        raise ProtocolError(501, "NotImplemented", "fetchXml: distinct is not supported")
    return root


def read_fetchxml(req: ApiRequest, entity: Entity) -> ApiResponse:
    """GET {set}?fetchXml=...: one page of the fetch's records, in the dialect's shape."""
    check_options(req.args, {"$format"})
    xml = req.args["fetchXml"]
    root = _document(xml)
    elements = root.findall("entity")
    element = elements[0] if len(elements) == 1 else None
    if element is None or element.get("name") != entity.logicalname:
        raise bad_request(f"fetchXml: the <entity> must be {entity.logicalname!r}", "fetchXml")
    where, params = "", list[Any]()
    found = sync_filters.parse_fetch_filters(without_links(element)).get(entity.logicalname)
    if found is not None:
        text = sync_filters.to_odata(found.check(entity))
        if text:
            where, params = parse_filter(text, entity)
    if root.get("aggregate", "false").lower() == "true":
        if element.find("link-entity") is not None:
            raise ProtocolError(501, "NotImplemented", "fetchXml: link-entity is not served "
                                                       "in aggregate queries")
        return read_aggregate(req, entity, root, element, where, params)
    names, order = _columns(element, entity)
    links = parse_links(req, element, entity)
    page_size = _number(root, "count", req.dialect.max_page_size, req.dialect.max_page_size)
    assert page_size is not None
    page = _number(root, "page", 1, 2**31 - 1) or 1
    top = _number(root, "top", None, req.dialect.max_page_size)
    offset = 0 if top is not None else (page - 1) * page_size
    limit = top if top is not None else page_size
    keys = shapes.json_keys(entity, req.dialect)
    prefs = parse_prefer(req.headers.getlist("Prefer"))
    shape = shapes.Shape(shapes.parse_annotations(prefs.include_annotations, req.dialect))
    if links:
        joined = queries.read_joined(req.org, entity, names, [j for _, j in links], where=where,
                                     params=params, order=order, offset=offset,
                                     limit=limit + 1, keys=keys)
        more = len(joined) > limit and top is None
        joined = joined[:limit]
        values = shapes.shape_records(req.org, entity, [base for base, _ in joined], shape,
                                      req.dialect)
        for value, (_, linked) in zip(values, joined, strict=True):
            for (alias, join), columns in zip(links, linked, strict=True):
                value.update(linked_columns(alias, join, columns, shape))
    else:
        with snapshot(req.org.db):
            body, sent, last = queries.read_page(req.org, entity, names, where=where,
                                                 params=params, order=order, offset=offset,
                                                 limit=limit, keys=keys)
        more = last is not None and top is None
        values = shapes.shape_records(req.org, entity, orjson.loads(b"[" + body + b"]"), shape,
                                      req.dialect)
    payload: dict[str, Any] = {
        "@odata.context": f"{req.service_root}$metadata#{entity.entitysetname}"}
    if shape.wants(COOKIE):
        payload["@" + COOKIE] = _cookie(page + 1 if more else page)
    if shape.wants(MORE):
        payload["@" + MORE] = more
    payload["value"] = values
    headers = {"Preference-Applied": f'odata.include-annotations="{prefs.include_annotations}"'} \
        if shape.annotations else {}
    return raw_json_response(orjson.dumps(payload), headers=headers)


def _columns(element: Element, entity: Entity) -> tuple[list[str], list[tuple[str, bool]]]:
    """The <attribute>s (all with <all-attributes/> or none named) and the <order>s."""
    chosen: list[str] = []
    order: list[tuple[str, bool]] = []
    everything = False
    for child in element:
        if child.tag == "attribute":
            chosen.append(logical_name(entity, child.get("name", "")))
        elif child.tag == "all-attributes":
            everything = True
        elif child.tag == "order":
            name = child.get("attribute", "")
            if entity.attribute(name) is None:
                raise bad_request(f"fetchXml: <order attribute={name!r}> is not an attribute "
                                  f"of {entity.logicalname}", "fetchXml")
            order.append((name, child.get("descending", "false").lower() == "true"))
    names = parse_select(None if everything or not chosen else ",".join(chosen), entity)
    return names, order


def _cookie(next_page: int) -> str:
    """A paging cookie as Dataverse writes one; only its page number is read back."""
    inner = quote(quote(f'<cookie page="{next_page - 1}"></cookie>', safe=""), safe="")
    return f'<cookie pagenumber="{next_page}" pagingcookie="{inner}" istracking="False" />'
