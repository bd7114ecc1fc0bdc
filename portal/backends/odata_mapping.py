"""How an OData v4 service's entity sets become our entities, and its records ours.

One `EntityMap` per entity set, made from the CSDL (`csdl_metadata`):

* names: our logical names are the set's and properties' names in lower case
  (`Accounts` -> `accounts`, `lastName` -> `lastname`); the map keeps both ways;
* the record id: a set whose key is one `Edm.Guid` ("guid" keys) uses it as
  the record's GUID. Any other key (integer, string, composite) is a server
  key (`sync_state`, docs/architecture.md): the record's GUID is derived from
  it or learnt from a create's answer, and the key properties stay attributes.
  A key the server picks (`Core.Computed`: identity integers) is "server"
  keyed; one the client gives (a CAP `Integer` or `String` key) is "value"
  keyed: a create sends it from the record's values (a single String key the
  client left empty gets the record's GUID as text);
* the modified timestamp (`modifiedAt`, `ModifiedOn`, `LastModifiedDateTime`, ...,
  or the connection's `timestamp_property`) is our `modifiedon`, a created
  timestamp our `createdon`;
* a single-valued navigation property whose ReferentialConstraint names one
  property of ours and the key of a guid-keyed set is a lookup (that property);
  one to the single key of a keyed set (CAP's `currency_code` -> `Currencies(code)`)
  is a lookup too: its values travel as the target's server keys and are the
  targets' GUIDs here (derived, noted in the page's `references`; on upload the
  engine's `Write.references` give the keys back);
* a navigation property whose ReferentialConstraint fills every property of a
  target's composite key (CAP's `period` -> `Periods(year, code)`, foreign keys
  `period_year`, `period_code`) is a lookup named after the navigation property:
  its foreign keys are no attributes of their own (the lookup is their one
  place); on download they form the target's key (`key_text`), on upload the
  target's key fills them. One whose foreign keys are keys of the record itself,
  or belong to another lookup, stays plain values;
* enums are picklists (member names on the wire, values here).
"""

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import orjson

from portal.backends.csdl_metadata import (
    CsdlCapabilities,
    CsdlEntityType,
    CsdlProperty,
    CsdlService,
)
from portal.errors import BackendError, InvalidInput
from portal.orgs.metadata import SYSTEM_ATTRIBUTES, Attribute, Entity, Option
from portal.orgs.sync_state import key_text, server_key_id

MODIFIED_NAMES = ("modifiedat", "modifiedon", "lastmodifieddatetime", "lastmodifiedat",
                  "lastmodified", "updatedat", "changedat", "changedon", "modified",
                  "lastchangedatetime", "systemmodstamp")
CREATED_NAMES = ("createdat", "createdon", "createddatetime", "created", "createddate")
NAME_PROPERTIES = ("name", "title", "lastname", "fullname", "subject", "description")
KEY_KINDS = ("guid", "value", "server")


def logical(name: str) -> str:
    """Our logical name of a service's name: lower case, `_` for other characters."""
    text = re.sub(r"[^a-z0-9_]", "_", name.lower())
    if not text or not text[0].isalpha():
        text = "x" + text
    return text[:64]


def _normal(name: str) -> str:
    return name.lower().replace("_", "")


@dataclass
class CompositeLookup:
    """A lookup to a set with a composite key: the foreign keys that hold its key."""

    target: str  # the target's entity set (its logical name once all maps are made)
    properties: dict[str, str]  # own server property -> the target's key property, key order
    plain: dict[str, str]  # own server property -> our name were it a plain value

    def key_of(self, item: dict[str, Any]) -> str | None:
        """The target's key (`key_text`) in a server record, None unless every part is set."""
        values = {theirs: item.get(own) for own, theirs in self.properties.items()}
        if any(v is None for v in values.values()):
            return None  # a part missing is no reference to any record
        return key_text(values)

    def values_of(self, key: str | None) -> dict[str, Any]:
        """The foreign keys' values for a target's key (all null for none)."""
        values = orjson.loads(key) if key is not None else {}
        return {own: values.get(theirs) for own, theirs in self.properties.items()}


@dataclass
class EntityMap:
    """One entity set: its entity, its keys and how its properties are named and typed."""

    entity: Entity
    entity_set: str
    key_kind: str  # KEY_KINDS
    keys: list[CsdlProperty]  # in key order
    properties: dict[str, CsdlProperty]  # by server name, the synced ones
    to_logical: dict[str, str]  # server name -> ours
    server_names: dict[str, str]  # ours -> server name
    enums: dict[str, dict[str, int]]  # server name -> its members
    capabilities: CsdlCapabilities
    modified: str | None = None  # the server's modified timestamp property
    created: str | None = None
    client_id: str | None = None  # a server-keyed set's property holding our GUID
    lookups: dict[str, str] = field(default_factory=dict)  # server property -> target set
    # Lookups to keyed sets: server property -> the target's logical name.
    keyed_lookups: dict[str, str] = field(default_factory=dict)
    # Lookups to sets with composite keys, by our attribute name (the navigation's).
    composite_lookups: dict[str, CompositeLookup] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """Our logical name of the set."""
        return self.entity.logicalname

    @property
    def computes_values(self) -> bool:
        """The service sets some synced attribute itself (a key it picks, a computed value)."""
        return any(self.properties[p].computed for p in self.to_logical)

    @property
    def keyed_lookup_names(self) -> set[str]:
        """Our names of the lookups whose values travel as the targets' server keys."""
        return {self.to_logical[p] for p in self.keyed_lookups} | set(self.composite_lookups)

    def with_plain(self, names: set[str]) -> "EntityMap":
        """This map with these composite lookups as their foreign keys' plain values.

        An org connected before they were lookups keeps them plain.
        """
        if not names & set(self.composite_lookups):
            return self
        to_logical = dict(self.to_logical)
        for name in names & set(self.composite_lookups):
            to_logical.update(self.composite_lookups[name].plain)
        return dataclasses.replace(
            self, to_logical=to_logical, server_names={v: k for k, v in to_logical.items()},
            composite_lookups={n: c for n, c in self.composite_lookups.items()
                               if n not in names})

    @property
    def keyed(self) -> bool:
        """Records are known by server keys, not by GUIDs."""
        return self.key_kind != "guid"

    # --- keys --------------------------------------------------------------

    def key_of(self, item: dict[str, Any]) -> str:
        """The server key (`sync_state.key_text`) of a record as the server sends it."""
        return key_text({k.name: item.get(k.name) for k in self.keys})

    def id_of(self, item: dict[str, Any]) -> str:
        """Our record id of a server record: its GUID key, or the GUID derived from its key."""
        if not self.keyed:
            return str(item.get(self.keys[0].name) or "").lower()
        return server_key_id(self.name, self.key_of(item))

    def key_values(self, key: str) -> dict[str, Any]:
        """A server key's properties and values (typed as the CSDL declares them)."""
        if len(self.keys) == 1:
            prop = self.keys[0]
            return {prop.name: int(key) if prop.type in ("integer", "bigint") else key}
        values = orjson.loads(key)
        return {k.name: values.get(k.name) for k in self.keys}

    def path(self, key: str) -> str:
        """The record's path: `Set(1)`, `Set('a')`, `Set(k1=1,k2='x')` (GUIDs bare)."""
        values = self.key_values(key)
        if len(values) == 1:
            predicate = literal(self.keys[0], next(iter(values.values())))
        else:
            predicate = ",".join(f"{k.name}={literal(k, values[k.name])}" for k in self.keys)
        return f"{self.entity_set}({quote(predicate, safe=chr(39) + '=,-')})"

    def key_from_url(self, url: str) -> str | None:
        """The server key in a record URL's key predicate (a tombstone's `id`), or None."""
        match = re.search(r"\(([^()]*)\)\s*$", url)
        if match is None:
            return None
        parts = re.findall(r"(?:(\w+)=)?('(?:[^']|'')*'|[^,]+)", match.group(1))
        values: dict[str, Any] = {}
        for n, (name, raw) in enumerate(parts):
            if n >= len(self.keys):
                return None
            prop = next((k for k in self.keys if k.name == name), self.keys[n])
            text = raw[1:-1].replace("''", "'") if raw.startswith("'") else raw
            values[prop.name] = int(text) if prop.type in ("integer", "bigint") else text
        if not self.keyed:
            return str(values[self.keys[0].name]).lower()
        return key_text(values)

    # --- records -----------------------------------------------------------

    def from_server(self, item: dict[str, Any],
                    references: dict[str, tuple[str, str]] | None = None) -> dict[str, Any]:
        """A server record in our form: every synced attribute, null where the server has none.

        A lookup to a keyed set holds the GUID derived from the target's key, noted in
        `references` (derived GUID -> (target, key)) where given.
        """
        record: dict[str, Any] = {self.entity.primaryidattribute: self.id_of(item)}
        for server, ours in self.to_logical.items():
            value = item.get(server)
            if value is not None:
                target = self.keyed_lookups.get(server)
                if target is not None:
                    key = str(value)
                    value = server_key_id(target, key)
                    if references is not None:
                        references[value] = (target, key)
                elif server in self.enums and isinstance(value, str):
                    value = self.enums[server].get(value, value)
                elif self.properties[server].type in ("uniqueidentifier", "lookup"):
                    value = str(value).lower()
            record[ours] = value
        for ours, lookup in self.composite_lookups.items():
            target_key = lookup.key_of(item)
            record[ours] = None
            if target_key is not None:
                record[ours] = server_key_id(lookup.target, target_key)
                if references is not None:
                    references[record[ours]] = (lookup.target, target_key)
        if self.modified:
            record["modifiedon"] = item.get(self.modified)
        if self.created:
            record["createdon"] = item.get(self.created)
        return record

    def to_server(self, values: dict[str, Any], *, creating: bool, record_id: str,
                  references: dict[str, str] | None = None) -> dict[str, Any]:
        """Our values as the server's body: what it lets a create (or an update) send.

        `references` (client GUID -> server key) turn lookups to keyed sets into keys;
        InvalidInput if one points at a record whose key is not known (yet).
        """
        body: dict[str, Any] = {}
        for ours, value in values.items():
            lookup = self.composite_lookups.get(ours)
            if lookup is not None:
                body.update(self._foreign_keys(ours, lookup, value, creating, references))
                continue
            server = self.server_names.get(ours)
            if server is None:
                continue  # system columns, the record id, attributes the server lacks
            prop = self.properties[server]
            if not (prop.insertable if creating else prop.updatable):
                continue  # computed or immutable on the server: synced down, never up
            if server in self.keyed_lookups and isinstance(value, str):
                target_key = (references or {}).get(value)
                if target_key is None:
                    raise InvalidInput(f"{ours}: the record {value} it points to is not on "
                                       "the service (yet)", field=ours)
                value = int(target_key) if prop.type in ("integer", "bigint") else target_key
            elif server in self.enums and isinstance(value, int):
                names = {v: k for k, v in self.enums[server].items()}
                value = names.get(value, value)
            body[server] = value
        if creating:
            if self.key_kind == "guid":
                body[self.keys[0].name] = record_id
            elif self.key_kind == "value":
                key = self.keys[0]
                if len(self.keys) == 1 and key.type == "string" and body.get(key.name) is None:
                    body[key.name] = record_id  # a text key the client may choose: its GUID
            elif self.client_id:
                body[self.client_id] = record_id
        return body

    def _foreign_keys(self, ours: str, lookup: CompositeLookup, value: Any, creating: bool,
                      references: dict[str, str] | None) -> dict[str, Any]:
        """A composite lookup's foreign keys in a body: the target's key, or all null."""
        props = [self.properties[p] for p in lookup.properties]
        if not all(p.insertable if creating else p.updatable for p in props):
            return {}
        key = None
        if isinstance(value, str):
            key = (references or {}).get(value)
            if key is None:
                raise InvalidInput(f"{ours}: the record {value} it points to is not on "
                                   "the service (yet)", field=ours)
        return lookup.values_of(key)

    def key_of_values(self, body: dict[str, Any]) -> str | None:
        """A value-keyed record's key from the body of its create, or None if incomplete."""
        if any(body.get(k.name) is None for k in self.keys):
            return None
        return self.key_of(body)


def literal(prop: CsdlProperty, value: Any) -> str:
    """A value as an OData URL literal of its property's type."""
    if prop.type in ("string", "memo") or prop.enum:
        return "'" + str(value).replace("'", "''") + "'"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _timestamp(entity_type: CsdlEntityType, names: tuple[str, ...],
               wanted: str | None) -> str | None:
    """The entity type's DateTimeOffset property of one of these names (or the one wanted)."""
    stamps = [p for p in entity_type.properties if p.edm == "Edm.DateTimeOffset"]
    if wanted:
        return next((p.name for p in stamps if p.name == wanted), None)
    for name in names:
        found = next((p.name for p in stamps if _normal(p.name) == name), None)
        if found:
            return found
    return None


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")  # an OData simple identifier


def names_per_set(option: str | None, field: str) -> tuple[str | None, dict[str, str]]:
    """A property-naming option read: one name for every set, and names per set.

    `modifiedAt` names it for every set that has it; `Orders=changedAt, Items=stamp`
    names it per entity set, and both forms mix (`modifiedAt, Orders=changedAt`).
    The `timestamp_property` and `client_id_property` options are read so.
    InvalidInput (on `field`) when an item is not a name or `Set=name`.
    """
    every: str | None = None
    per_set: dict[str, str] = {}
    for item in (option or "").split(","):
        item = item.strip()
        if not item:
            continue
        entity_set, equals, prop = item.rpartition("=")
        if not _NAME.match(prop.strip()) or (equals and not _NAME.match(entity_set.strip())):
            raise InvalidInput(f"{item!r} is not a property name or EntitySet=property",
                               field=field)
        if entity_set:
            per_set[entity_set.strip()] = prop.strip()
        elif every is not None:
            raise InvalidInput("name one property for every set, and others as "
                               "EntitySet=property", field=field)
        else:
            every = prop.strip()
    return every, per_set


def entity_maps(service: CsdlService, *, timestamp_property: str | None = None,
                client_id_property: str | None = None) -> dict[str, EntityMap]:
    """Each entity set's map, by our logical name, in the service's order."""
    from portal.backends.csdl_metadata import entity_types_of_sets

    sets = list(entity_types_of_sets(service))
    # Entity types of one key property: their set, and whether the key is a GUID.
    key_sets = {service.entity_sets[name]: (name, t.keys[0],
                                            (t.property(t.keys[0]) or _NONE).edm == "Edm.Guid")
                for name, t in sets if len(t.keys) == 1}
    composite_sets = {service.entity_sets[name]: (name, t.keys) for name, t in sets
                      if len(t.keys) > 1}
    every, per_set = names_per_set(timestamp_property, "timestamp_property")
    for set_name, prop in per_set.items():
        if _timestamp(_named_set(service, set_name, "timestamp"), (), prop) is None:
            raise BackendError(f"entity set {set_name} has no DateTimeOffset property {prop} "
                               "(the timestamp property named for it)")
    every_client_id, client_ids = names_per_set(client_id_property, "client_id_property")
    for set_name, prop in client_ids.items():
        found = _named_set(service, set_name, "client-id").property(prop)
        if found is None or found.edm != "Edm.String":
            raise BackendError(f"entity set {set_name} has no String property {prop} "
                               "(the client-id property named for it)")
    maps: dict[str, EntityMap] = {}
    used: set[str] = set()
    for set_name, entity_type in sets:
        name = logical(set_name)
        while name in used:
            name = name[:60] + "_2"
        used.add(name)
        maps[name] = _entity_map(service, name, set_name, entity_type, key_sets,
                                 composite_sets, per_set.get(set_name, every),
                                 client_ids.get(set_name, every_client_id))
    for m in maps.values():
        if m.entity_set in client_ids and m.key_kind != "server":
            raise BackendError(f"the client-id property is named for entity set "
                               f"{m.entity_set}, whose keys the service does not pick "
                               "(only such sets need one)")
    targets = {m.entity_set: m.name for m in maps.values()}
    for m in maps.values():
        for attr in m.entity.attributes:
            if attr.type == "lookup":
                attr.targets = [targets[t] for t in attr.targets]
        m.keyed_lookups = {p: targets[t] for p, t in m.lookups.items()
                           if maps[targets[t]].keyed}
        for lookup in m.composite_lookups.values():
            lookup.target = targets[lookup.target]
    return maps


_NONE = CsdlProperty("", "", None)


def _named_set(service: CsdlService, set_name: str, option: str) -> CsdlEntityType:
    """The entity type of a set an option names; BackendError naming it if there is none."""
    type_name = service.entity_sets.get(set_name)
    if type_name is None:
        raise BackendError(f"the {option} property is named for entity set {set_name}, "
                           "which the service does not have")
    return service.entity_types[type_name]


def _entity_map(service: CsdlService, name: str, set_name: str, entity_type: CsdlEntityType,
                key_sets: dict[str, tuple[str, str, bool]],
                composite_sets: dict[str, tuple[str, list[str]]],
                timestamp_property: str | None, client_id_property: str | None) -> EntityMap:
    keys = [entity_type.property(k) for k in entity_type.keys]
    if any(k is None or k.type is None for k in keys):
        raise BackendError(f"entity set {set_name}: its key ({', '.join(entity_type.keys)}) "
                           "has a property of a type we cannot keep")
    key_props = [k for k in keys if k is not None]
    if len(key_props) == 1 and key_props[0].edm == "Edm.Guid":
        kind = "guid"
    elif all(k.computed for k in key_props):
        kind = "server"
    else:
        kind = "value"
    modified = _timestamp(entity_type, MODIFIED_NAMES, timestamp_property)
    created = _timestamp(entity_type, CREATED_NAMES, None)
    # One own property naming a target's single key: a GUID key, or any other key
    # (then the own property is no key of ours: a create sends key values as they are).
    lookups: dict[str, str] = {}
    for c in entity_type.lookups:
        target = key_sets.get(c.target)
        if len(c.properties) != 1 or target is None:
            continue
        own, referenced = next(iter(c.properties.items()))
        prop = entity_type.property(own)
        if prop is None:
            continue
        if target[2] and prop.type == "uniqueidentifier" or not target[2] and \
                referenced == target[1] and own not in entity_type.keys and prop.type:
            lookups[own] = target[0]
    composites = _composite_lookups(entity_type, composite_sets, set(lookups))
    foreign = {own for _, props in composites.values() for own in props}
    pk = logical(key_props[0].name) if kind == "guid" else f"{name[:60]}_id"
    entity = Entity(logicalname=name, displayname=set_name, labels={"1033": set_name},
                    primaryidattribute=pk, entitysetname=name)  # the client's own set name
    if kind != "guid":
        entity.attributes.append(Attribute(pk, "uniqueidentifier", "Record id", issystem=True))
    properties: dict[str, CsdlProperty] = {}
    to_logical: dict[str, str] = {}
    enums: dict[str, dict[str, int]] = {}
    client_id = client_id_property if kind == "server" and client_id_property and \
        (entity_type.property(client_id_property) or _NONE).edm == "Edm.String" else None
    plain: dict[str, str] = {}  # composite lookups' foreign keys -> our names were they plain
    for prop in entity_type.properties:
        if prop.type is None or prop.name in (modified, created):
            continue
        ours = logical(prop.name)
        if ours in SYSTEM_ATTRIBUTES or ours in to_logical.values() or ours in plain.values() \
                or (ours == pk and kind != "guid"):
            ours = f"{ours[:62]}_x"
        if prop.name in foreign:  # held by its lookup, not an attribute of its own
            plain[prop.name] = ours
            properties[prop.name] = prop
            continue
        kind_name = prop.type
        targets: list[str] = []
        if prop.name in lookups:
            kind_name, targets = "lookup", [lookups[prop.name]]
        options = []
        if prop.enum:
            members = service.enums[prop.enum].members
            enums[prop.name] = members
            options = [Option(v, k, {"1033": k}) for k, v in members.items()]
        is_key = any(prop is k for k in key_props)
        if is_key and kind == "guid":
            ours = pk
        entity.attributes.append(Attribute(
            ours, kind_name, prop.name, {"1033": prop.name},
            maxlength=prop.maxlength if kind_name in ("string", "memo") else None,
            precision=prop.scale if kind_name in ("decimal", "money") else None,
            required=not prop.nullable and not prop.computed and not is_key
            and prop.name != client_id,
            options=options, targets=targets,
            issystem=is_key and kind == "guid" or not prop.updatable and not is_key
            or prop.name == client_id))
        properties[prop.name] = prop
        if not (is_key and kind == "guid"):
            to_logical[prop.name] = ours
    composite_lookups: dict[str, CompositeLookup] = {}
    for navigation, (target_set, props) in composites.items():
        ours = logical(navigation)
        while ours in SYSTEM_ATTRIBUTES or ours in to_logical.values() or \
                ours in plain.values() or ours in composite_lookups or ours == pk:
            ours = f"{ours[:62]}_x"
        parts = [properties[p] for p in props]
        entity.attributes.append(Attribute(
            ours, "lookup", navigation, {"1033": navigation}, targets=[target_set],
            required=any(not p.nullable and not p.computed for p in parts),
            issystem=not all(p.updatable for p in parts)))
        composite_lookups[ours] = CompositeLookup(target_set, props,
                                                  {p: plain[p] for p in props})
    entity.primarynameattribute = next(
        (to_logical[p] for n in NAME_PROPERTIES for p in to_logical if _normal(p) == n), None)
    return EntityMap(entity, set_name, kind, key_props, properties, to_logical,
                     {v: k for k, v in to_logical.items()}, enums,
                     service.capabilities_of(set_name), modified, created, client_id, lookups,
                     composite_lookups=composite_lookups)


def _composite_lookups(entity_type: CsdlEntityType,
                       composite_sets: dict[str, tuple[str, list[str]]],
                       claimed: set[str]) -> dict[str, tuple[str, dict[str, str]]]:
    """Navigations filling a target's whole composite key: name -> (target set, own -> theirs).

    Own properties that are keys of the record itself, of a type we do not keep, or
    held by another lookup (`claimed`) leave that navigation plain values.
    """
    found: dict[str, tuple[str, dict[str, str]]] = {}
    for c in entity_type.lookups:
        target = composite_sets.get(c.target)
        if target is None or sorted(c.properties.values()) != sorted(target[1]):
            continue
        if any(own in entity_type.keys or own in claimed
               or (entity_type.property(own) or _NONE).type is None for own in c.properties):
            continue
        claimed.update(c.properties)
        own_of = {theirs: own for own, theirs in c.properties.items()}
        found[c.name] = (target[0], {own_of[k]: k for k in target[1]})  # the target's key order
    return found
