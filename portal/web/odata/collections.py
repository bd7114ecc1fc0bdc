"""Reads of entity sets: query options, server-driven paging, change tracking and deltas.

Pages are assembled as bytes from the JSON texts SQLite makes per record
(portal.orgs.queries), so a page of 1,000 records builds no dict per record.
"""

from typing import Any
from urllib.parse import quote, urlencode

import orjson

from portal.db import snapshot
from portal.orgs import queries
from portal.orgs.changes import changes_since
from portal.orgs.metadata import Entity
from portal.orgs.store import current_version, metadata_version
from portal.web.odata import shapes
from portal.web.odata.delta import make_deltatoken, read_deltatoken
from portal.web.odata.etags import etag
from portal.web.odata.fetchxml import read_fetchxml
from portal.web.odata.messages import (
    ApiRequest,
    ApiResponse,
    ProtocolError,
    bad_request,
    json_response,
    raw_json_response,
)
from portal.web.odata.options import QueryOptions, check_options, parse_options
from portal.web.odata.paging import PageState, make_skiptoken, query_digest, read_skiptoken
from portal.web.odata.prefer import Preferences, parse_prefer


def page_size_of(req: ApiRequest, prefs: Preferences) -> int:
    """The page size: the dialect's (Org API 1,000, Dataverse 5,000) unless
    Prefer: odata.maxpagesize asks for another, up to the dialect's most (5,000)."""
    return min(prefs.maxpagesize or req.dialect.default_page_size, req.dialect.max_page_size)


def link(req: ApiRequest, set_name: str, params: list[tuple[str, str]]) -> str:
    """An absolute URL of the entity set with these query options (spaces as %20)."""
    query = urlencode(params, quote_via=quote, safe="$(),'")
    return req.service_root + set_name + ("?" + query if query else "")


def context_url(req: ApiRequest, entity: Entity, opts_select: str | None, suffix: str = ""
                ) -> str:
    """The @odata.context of a collection, naming the $select list when there is one."""
    select = f"({opts_select.replace(' ', '')})" if opts_select else ""
    return f"{req.service_root}$metadata#{entity.entitysetname}{select}{suffix}"


def applied(prefs: Preferences, page_size: int, tracked: bool, shape: shapes.Shape | None = None
            ) -> dict[str, str]:
    """The Preference-Applied header for the preferences that were honoured."""
    done = []
    if shape is not None and shape.annotations:
        done.append(f'odata.include-annotations="{prefs.include_annotations}"')
    if prefs.maxpagesize is not None:
        done.append(f"odata.maxpagesize={page_size}")
    if tracked:
        done.append("odata.track-changes")
    return {"Preference-Applied": ", ".join(done)} if done else {}


def read_collection(req: ApiRequest, entity: Entity) -> ApiResponse:
    """GET /{set}: a page of records, with nextLink, count and (tracked) deltaLink."""
    unserved = req.dialect.unserved_options & set(req.args)
    if unserved:
        raise ProtocolError(501, "NotImplemented",
                            f"the {sorted(unserved)[0]} query option is not supported")
    if req.dialect.fetchxml and "fetchXml" in req.args:
        return read_fetchxml(req, entity)
    opts = parse_options(req.args, entity, req.dialect)
    prefs = parse_prefer(req.headers.getlist("Prefer"))
    if opts.deltatoken is not None:
        return read_delta(req, entity, opts, prefs)
    shape = read_shape(req, entity, prefs)
    keys = shapes.json_keys(entity, req.dialect)
    set_name = entity.entitysetname
    digest = query_digest(req.org.name, set_name, req.args.get("$filter"),
                          req.args.get("$orderby"))
    page_size = page_size_of(req, prefs)
    if opts.skiptoken is not None:
        state = read_skiptoken(req.secret, digest, opts.skiptoken)
        if prefs.maxpagesize is None:
            page_size = state.page_size
        after, remaining, offset, version = state.after, state.remaining, 0, state.version
    else:
        after, remaining, offset, version = None, opts.top, opts.skip, None
    tracked = prefs.track_changes or version is not None
    if tracked and (opts.has_filter or opts.orderby or opts.top is not None or opts.skip):
        raise bad_request("change tracking works with $select only: leave out $filter, "
                          "$orderby, $top and $skip", "Prefer")
    limit = page_size if remaining is None else min(page_size, remaining)
    db = req.org.db
    # One snapshot: the version a tracked read starts at and its first page agree,
    # so its delta link misses nothing written while the later pages are read.
    with snapshot(db):
        if tracked and version is None:
            version = current_version(db)
        body, sent, last = queries.read_page(
            req.org, entity, shape.columns(opts.select, keys), where=opts.where, params=opts.params,
            order=opts.orderby, after=after, offset=offset, limit=limit, keys=keys
        ) if limit else (b"", 0, None)
        total = queries.count(req.org, entity, where=opts.where, params=opts.params) \
            if opts.count else None
        if shape.needed and body:
            records = shapes.shape_records(req.org, entity, orjson.loads(b"[" + body + b"]"),
                                           shape, req.dialect)
            body = orjson.dumps(records)[1:-1]
    more = last is not None
    if remaining is not None:
        remaining -= sent
        more = more and remaining > 0
    parts = [b'{"@odata.context":', orjson.dumps(context_url(req, entity, req.args.get("$select")))]
    if total is not None:
        parts.append(b',"@odata.count":%d' % total)
    for name, value in collection_annotations(req, shape, total).items():
        parts += [b",", orjson.dumps(name), b":", orjson.dumps(value)]
    parts += [b',"value":[', body, b"]"]
    if more:
        assert last is not None
        token = make_skiptoken(req.secret, digest, PageState(last, remaining, page_size, version))
        keep = [(k, v) for k, v in req.args.items(multi=True)
                if k not in ("$skiptoken", "$skip", "$top")]
        parts += [b',"@odata.nextLink":', orjson.dumps(link(req, set_name,
                                                            keep + [("$skiptoken", token)]))]
    elif tracked:
        assert version is not None
        parts += [b',"@odata.deltaLink":', orjson.dumps(delta_link(req, entity, version))]
    parts.append(b"}")
    return raw_json_response(b"".join(parts), headers=applied(prefs, page_size, tracked, shape))


def count_collection(req: ApiRequest, entity: Entity) -> ApiResponse:
    """GET /{set}/$count: how many records match $filter, as plain text (OData 4.0, 11.2.9)."""
    check_options(req.args, {"$filter", "$format"})
    opts = parse_options(req.args, entity, req.dialect)
    total = queries.count(req.org, entity, where=opts.where, params=opts.params)
    return ApiResponse(200, str(total).encode(), {"Content-Type": "text/plain"})


def read_shape(req: ApiRequest, entity: Entity, prefs: Preferences) -> shapes.Shape:
    """The annotations and expansions a read asks for, as its dialect serves them."""
    return shapes.Shape(
        shapes.parse_annotations(prefs.include_annotations, req.dialect),
        shapes.parse_expand(req.args.get("$expand"), entity, req.org, req.dialect))


def collection_annotations(req: ApiRequest, shape: shapes.Shape, total: int | None
                           ) -> dict[str, Any]:
    """Dataverse's annotations of a collection (record count, metadata version)."""
    if not shape.wants("Microsoft.Dynamics.CRM.totalrecordcount"):
        return {}
    return {"@Microsoft.Dynamics.CRM.totalrecordcount": -1 if total is None else total,
            "@Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded": False,
            "@Microsoft.Dynamics.CRM.globalmetadataversion": str(metadata_version(req.org.db))}


def delta_link(req: ApiRequest, entity: Entity, version: int) -> str:
    """The link to the changes of a set after `version`, keeping the request's $select."""
    params = [("$select", req.args["$select"])] if "$select" in req.args else []
    token = make_deltatoken(req.secret, req.org.name, entity.entitysetname, version)
    return link(req, entity.entitysetname, params + [("$deltatoken", token)])


def read_delta(req: ApiRequest, entity: Entity, opts: QueryOptions, prefs: Preferences
               ) -> ApiResponse:
    """GET /{set}?$deltatoken=…: changed records and $deletedEntity tombstones, paged."""
    extra = [k for k in req.args if k.startswith("$") and k not in
             ("$deltatoken", "$select", "$format")]
    if extra:
        raise bad_request(f"{extra[0]} cannot be combined with $deltatoken", extra[0])
    version = read_deltatoken(req.secret, req.org.name, entity.entitysetname, opts.deltatoken
                              or "")
    page_size = page_size_of(req, prefs)
    page = changes_since(req.org, entity.logicalname, version, limit=page_size)
    deleted_context = f"{req.service_root}$metadata#{entity.entitysetname}/$deletedEntity"
    names = opts.select
    keys = shapes.json_keys(entity, req.dialect)
    values: list[dict[str, Any]] = []
    for change in page.changes:
        if change.record is None:
            values.append({"@odata.context": deleted_context, "id": change.id,
                           "reason": "deleted"})
        else:
            record = change.record
            values.append({"@odata.etag": etag(change.version),
                           **{keys.get(name, name): record.get(name) for name in names}})
    payload: dict[str, Any] = {
        "@odata.context": context_url(req, entity, req.args.get("$select"), "/$delta"),
        "value": values}
    link_key = "@odata.nextLink" if page.more else "@odata.deltaLink"
    payload[link_key] = delta_link(req, entity, page.next_version)
    return json_response(payload, headers=applied(prefs, page_size, True))
