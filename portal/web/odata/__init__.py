"""The Org API's protocol: OData v4 as Resco Cloud and Dataverse speak it.

One module per concern: `messages` (the request/response values every handler
takes and returns), `prefer` and `etags` (headers), `csdl` ($metadata),
`entity_definitions` (Dataverse-style metadata, with `metadata_filter` and
`relationships`; `metadata_changes` for tables and columns made the Dataverse
way), `options` and `filters` (query options to SQL), `paging` and `delta`
(signed continuation tokens), `collections` and `entities` (reads and writes of
records), `batch` (JSON and multipart $batch), `customization` (metadata
changes), `dispatch` (URL → handler) and `auth` (credentials).
portal/web/api.py is the Flask side of it.
"""
