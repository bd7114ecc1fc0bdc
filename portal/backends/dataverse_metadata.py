"""Read Dataverse-style EntityDefinitions (ours or Dataverse's) into our Entity definitions.

Pure functions over the decoded JSON: the `resco` and `dynamics` backends use
them to copy a server's metadata. Dataverse attribute types without a place in
our model (Virtual, EntityName, PartyList, File, Image, ...) are skipped;
Customer and Owner are lookups, State and Status picklists. Attributes the
server will not take from a client (IsValidForUpdate false, calculated
or rollup columns) are read as system attributes: they sync down, never up.

Which tables can be synced (`skip_reason`): not private ones (Dataverse's
internal tables), not virtual or elastic ones (their rows live elsewhere and
have no change tracking or versions), and not the ones known to fail when
read or written as plain records (`UNSYNCABLE_TABLES`).
"""

from dataclasses import dataclass
from typing import Any

from portal.orgs.metadata import Attribute, Entity, Option
from portal.orgs.types import from_dataverse

# Tables Dataverse lists but that cannot be synced as plain records: they are
# written only through their parent's messages (calendarrule through calendar,
# the time zone tables), internal bookkeeping (commitment, postregarding,
# principalobjectaccess...), or solution components whose rows a client must
# not create (plugintype, sdkmessage...). Resco's CRM Sync skips the same kind.
UNSYNCABLE_TABLES = frozenset({
    "activityparty", "asyncoperation", "bulkdeletefailure", "calendarrule", "commitment",
    "duplicaterecord", "importlog", "pluginassembly", "plugintype", "plugintypestatistic",
    "postfollow", "postregarding", "postrole", "principalobjectaccess",
    "principalentitymap", "sdkmessage", "sdkmessagefilter", "sdkmessageprocessingstep",
    "sdkmessageprocessingstepimage", "subscription", "subscriptionclients",
    "subscriptionsyncinfo", "subscriptiontrackingdeletedobject", "timezonedefinition",
    "timezonelocalizedname", "timezonerule", "userentityinstancedata",
    "userentityuisettings", "workflowlog",
})
# AttributeMetadata.SourceType: 0 simple, 1 calculated, 2 rollup, 3 formula.
COMPUTED_SOURCE_TYPES = {1, 2, 3}


def skip_reason(data: dict[str, Any]) -> str | None:
    """Why an EntityMetadata cannot be synced ('private', 'virtual', ...), or None if it can."""
    name = str(data.get("LogicalName") or "")
    table_type = str(data.get("TableType") or "Standard")
    if data.get("IsPrivate"):
        return "private"
    if table_type in ("Virtual", "Elastic"):
        return table_type.lower()
    if data.get("DataProviderId") and not data.get("IsIntersect"):
        return "virtual"  # rows come from a data provider outside Dataverse
    if name in UNSYNCABLE_TABLES:
        return "known to fail when synced"
    if not data.get("EntitySetName") or not data.get("PrimaryIdAttribute"):
        return "not reachable through the Web API"
    return None


def label_text(value: Any) -> tuple[str, dict[str, str]]:
    """(user label, {language code: label}) of a Dataverse Label object."""
    if not isinstance(value, dict):
        return "", {}
    labels = {str(item["LanguageCode"]): str(item["Label"])
              for item in value.get("LocalizedLabels") or []
              if isinstance(item, dict) and item.get("Label") is not None}
    user = value.get("UserLocalizedLabel")
    text = str(user["Label"]) if isinstance(user, dict) and user.get("Label") else ""
    return text, labels


def attribute_from_definition(data: dict[str, Any], primary_id: str) -> Attribute | None:
    """One AttributeMetadata as our Attribute; None for a type we do not model."""
    found = from_dataverse(data.get("AttributeType"), data.get("@odata.type"))
    if found is None:
        return None
    name = str(data["LogicalName"])
    displayname, labels = label_text(data.get("DisplayName"))
    required_level = (data.get("RequiredLevel") or {}).get("Value")
    options = []
    if found.options:
        for option in ((data.get("OptionSet") or {}).get("Options") or []):
            text, option_labels = label_text(option.get("Label"))
            options.append(Option(int(option["Value"]), text, option_labels))
        if not options:
            return None  # options not read (no cast answer): nothing to check values against
    if found.targets and not data.get("Targets"):
        return None  # targets not read: nothing to point to
    return Attribute(
        logicalname=name,
        type=found.name,
        displayname=displayname,
        labels=labels,
        maxlength=data.get("MaxLength") if found.maxlength is not None else None,
        precision=data.get("Precision") if found.precision is not None else None,
        required=required_level in ("ApplicationRequired", "SystemRequired")
        and name != primary_id,
        options=options,
        targets=list(data.get("Targets") or []) if found.targets else [],
        issystem=not writable(data),
    )


def writable(data: dict[str, Any]) -> bool:
    """True when a client may change the attribute: valid for update, not computed.

    A create-only attribute counts as not writable: our clients change records
    after creating them, and an update would have to leave it out.
    """
    if data.get("SourceType") in COMPUTED_SOURCE_TYPES:
        return False
    return bool(data.get("IsValidForUpdate", True))


def readable(data: dict[str, Any]) -> bool:
    """False for attributes a record never shows: not valid for read, or a helper of another.

    `AttributeOf` names the attribute a helper column belongs to (a lookup's
    name and yomi name, a money column's base value): they follow their owner.
    """
    return data.get("IsValidForRead", True) is not False and not data.get("AttributeOf")


def merge_casts(attributes: list[dict[str, Any]], cast: Any) -> None:
    """Fill attributes with what a typed cast answer adds (OptionSet, GlobalOptionSet, Targets).

    `$expand=Attributes` gives the base AttributeMetadata; a picklist's options
    and a lookup's targets come from the cast segments
    (`Attributes/Microsoft.Dynamics.CRM.PicklistAttributeMetadata?$expand=OptionSet`).
    """
    items = cast.get("value", [cast]) if isinstance(cast, dict) else []
    by_name = {str(a.get("LogicalName")): a for a in attributes}
    for item in items:
        attr = by_name.get(str(item.get("LogicalName")))
        if attr is None:
            continue
        optionset = item.get("OptionSet") or item.get("GlobalOptionSet")
        if isinstance(optionset, dict) and optionset.get("Options"):
            attr["OptionSet"] = optionset
        if item.get("Targets"):
            attr["Targets"] = item["Targets"]


@dataclass(frozen=True)
class ManyToMany:
    """An N:N relationship: its intersect table and the two sides' attributes and navigations."""

    schema_name: str
    intersect: str
    entity1: str
    attribute1: str
    navigation1: str
    entity2: str
    attribute2: str
    navigation2: str


def many_to_many(payload: Any) -> list[ManyToMany]:
    """The ManyToManyRelationshipMetadata of a RelationshipDefinitions or entity answer."""
    items = payload.get("value", [payload]) if isinstance(payload, dict) else payload or []
    return [ManyToMany(str(i.get("SchemaName") or ""), str(i["IntersectEntityName"]),
                       str(i["Entity1LogicalName"]), str(i["Entity1IntersectAttribute"]),
                       str(i.get("Entity1NavigationPropertyName") or ""),
                       str(i["Entity2LogicalName"]), str(i["Entity2IntersectAttribute"]),
                       str(i.get("Entity2NavigationPropertyName") or ""))
            for i in items if i.get("IntersectEntityName")]


def as_intersect(entity: Entity, relationship: ManyToMany) -> Entity:
    """An intersect table as our intersect entity: its two ids become lookups to the sides."""
    entity.isintersect = True
    sides = {relationship.attribute1: relationship.entity1,
             relationship.attribute2: relationship.entity2}
    for attr in entity.attributes:
        if attr.logicalname in sides:
            attr.type, attr.targets, attr.required = "lookup", [sides[attr.logicalname]], True
            attr.issystem = False  # written through associate ($ref), as our intersect rows
    return entity


def entity_from_definition(data: dict[str, Any]) -> Entity:
    """One EntityMetadata (with its Attributes expanded) as our Entity."""
    displayname, labels = label_text(data.get("DisplayName"))
    primary_id = str(data.get("PrimaryIdAttribute") or "")
    entity = Entity(
        logicalname=str(data["LogicalName"]),
        displayname=displayname,
        labels=labels,
        primaryidattribute=primary_id,
        primarynameattribute=data.get("PrimaryNameAttribute") or None,
        entitysetname=str(data.get("EntitySetName") or ""),
        isintersect=bool(data.get("IsIntersect")),
    )
    for item in data.get("Attributes") or []:
        if not readable(item):
            continue
        attr = attribute_from_definition(item, primary_id)
        if attr is not None:
            entity.attributes.append(attr)
    return entity


def entities_from_entity_definitions(payload: Any) -> list[Entity]:
    """Entities of an EntityDefinitions answer: a collection, one entity, or a list."""
    if isinstance(payload, dict) and "value" in payload:
        payload = payload["value"]
    if isinstance(payload, dict):
        payload = [payload]
    return [entity_from_definition(item) for item in payload]
