"""Hosted organizations: the registry of orgs and users, and each org's own store.

Modules: `registry` (orgs and users in the registry database), `metadata`
(entity and attribute definitions), `types` (the attribute-type table: storage,
checks, filter comparison, Edm and Dataverse names), `store` (an org's SQLite file and its
schema), `records` (writes and reads of records), `changes` (the change feed),
`templates` (org templates such as `sales`).
"""
