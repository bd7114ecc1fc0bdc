"""Read Dataverse-style EntityDefinitions (ours or Dataverse's) into our Entity definitions.

Pure functions over the decoded JSON: the `resco` and `dynamics` backends use
them to copy a server's metadata. Dataverse attribute types without a place in
our model (Virtual, EntityName, PartyList, File, Image, ...) are skipped;
Customer and Owner are lookups, State and Status picklists.
"""

from typing import Any

from portal.orgs.metadata import Attribute, Entity, Option
from portal.orgs.types import from_dataverse


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
        issystem=not data.get("IsValidForUpdate", True),
    )


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
