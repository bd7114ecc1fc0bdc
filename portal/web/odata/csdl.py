"""CSDL 4.0 $metadata of an org, built from its entity definitions.

Lookups are plain Edm.Guid properties under their logical name (our JSON
keeps the GUID there, Resco-style), plus one navigation property per target
named `{lookup}_{target}` as Dataverse names its single-valued navigation
properties. They carry no ReferentialConstraint on purpose: with one,
python-odata drops the foreign-key property from every insert it sends (it
expects an `@odata.bind` instead), and the lookup would be lost
(see docs/org-api.md). Writes accept both forms. The document follows the
request's dialect: on the Dataverse root a lookup property is `_{name}_value`,
as its records name it.
"""

from xml.sax.saxutils import quoteattr

from portal.orgs.metadata import Attribute, Entity
from portal.orgs.store import OrgDb
from portal.orgs.types import TYPES, edm_facets
from portal.web.odata.dialect import ORG_API, Dialect

NAMESPACE = "Microsoft.Dynamics.CRM"
CONTAINER = "System"
CORE = "Org.OData.Core.V1"

# Set by the store on every write, so clients must not send them.
COMPUTED = ("createdon", "modifiedon", "versionnumber")


def navigation_name(attr: Attribute, target: str) -> str:
    """Name of a lookup's navigation property to one target entity."""
    return f"{attr.logicalname}_{target}"


def navigations(entity: Entity, entities: dict[str, Entity]) -> list[tuple[str, Attribute, str]]:
    """(navigation name, lookup attribute, target entity) of every lookup target that exists."""
    names = {a.logicalname for a in entity.attributes}
    found = []
    for attr in entity.attributes:
        if attr.type != "lookup":
            continue
        for target in attr.targets:
            name = navigation_name(attr, target)
            if target in entities and name not in names:
                found.append((name, attr, target))
    return found


def metadata_document(org: OrgDb, dialect: Dialect = ORG_API) -> bytes:
    """The org's $metadata in a dialect, cached until its metadata changes."""
    entities = org.entities()  # first: a metadata change clears org.derived
    key = f"csdl:{dialect.name}"
    cached = org.derived.get(key)
    if cached is None:
        cached = org.derived[key] = _build(entities, dialect).encode()
    return cached


def _property(attr: Attribute, pk: str, dialect: Dialect) -> str:
    facets = "".join(f' {name}="{value}"' for name, value in edm_facets(attr))
    if attr.logicalname == pk:
        facets += ' Nullable="false"'
    # Lookups are named as the dialect's records name them (Dataverse: _{name}_value).
    name = dialect.lookup_key(attr.logicalname) if attr.type == "lookup" else attr.logicalname
    head = f'<Property Name="{name}" Type="{TYPES[attr.type].edm}"{facets}'
    notes = []
    if attr.logicalname in COMPUTED:
        notes.append(f'<Annotation Term="{CORE}.Computed" Bool="true"/>')
    label = attr.displayname or attr.logicalname
    notes.append(f'<Annotation Term="{CORE}.Description" String={quoteattr(label)}/>')
    if TYPES[attr.type].options and attr.options:
        # The option set, readable by any client: Validation.AllowedValues.
        values = "".join(
            f'<Record><PropertyValue Property="Value" Int="{o.value}"/>'
            f'<Annotation Term="{CORE}.Description" String={quoteattr(o.label)}/></Record>'
            for o in attr.options)
        notes.append('<Annotation Term="Org.OData.Validation.V1.AllowedValues">'
                     f"<Collection>{values}</Collection></Annotation>")
    return head + ">" + "".join(notes) + "</Property>"


def _build(entities: dict[str, Entity], dialect: Dialect) -> str:
    types, sets = [], []
    for entity in entities.values():
        pk = entity.primaryidattribute
        parts = [f'<EntityType Name="{entity.logicalname}">',
                 f'<Key><PropertyRef Name="{pk}"/></Key>']
        parts += [_property(a, pk, dialect) for a in entity.attributes]
        navs = navigations(entity, entities)
        parts += [f'<NavigationProperty Name="{name}" Type="{NAMESPACE}.{target}"/>'
                  for name, _, target in navs]
        parts.append("</EntityType>")
        types.append("".join(parts))
        bindings = "".join(
            f'<NavigationPropertyBinding Path="{name}" Target="{entities[target].entitysetname}"/>'
            for name, _, target in navs)
        sets.append(
            f'<EntitySet Name="{entity.entitysetname}" '
            f'EntityType="{NAMESPACE}.{entity.logicalname}">'
            f"{bindings}"
            f'<Annotation Term="{CORE}.OptimisticConcurrency"><Collection>'
            "<PropertyPath>versionnumber</PropertyPath></Collection></Annotation>"
            "</EntitySet>")
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<edmx:Edmx Version="4.0" xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx">'
        '<edmx:Reference Uri="https://oasis-tcs.github.io/odata-vocabularies/vocabularies/'
        f'Org.OData.Core.V1.xml"><edmx:Include Namespace="{CORE}" Alias="Core"/></edmx:Reference>'
        '<edmx:Reference Uri="https://oasis-tcs.github.io/odata-vocabularies/vocabularies/'
        'Org.OData.Validation.V1.xml"><edmx:Include Namespace="Org.OData.Validation.V1" '
        'Alias="Validation"/></edmx:Reference>'
        "<edmx:DataServices>"
        f'<Schema Namespace="{NAMESPACE}" Alias="mscrm" '
        'xmlns="http://docs.oasis-open.org/odata/ns/edm">'
        + "".join(types)
        + f'<EntityContainer Name="{CONTAINER}">' + "".join(sets) + "</EntityContainer>"
        "</Schema></edmx:DataServices></edmx:Edmx>"
    )
