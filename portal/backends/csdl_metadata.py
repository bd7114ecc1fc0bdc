"""Read an OData v4 service's CSDL `$metadata` (XML): what the `odata` backend syncs.

The model (`CsdlService`) is shared with `csdl_json`, the reader of the JSON form.

Entity types with their keys, properties (Edm type read as our attribute type
through `portal.orgs.types`, facets MaxLength, Precision, Scale, Nullable),
enum types, navigation properties with a ReferentialConstraint (lookups) and
the container's entity sets. `Core.Computed` and `Core.Immutable` annotations,
inline or in `<Annotations Target=...>` (as SAP CAP writes them), make a
property not insertable / not updatable. The document comes from a server we
do not trust: defusedxml refuses DTDs and entities, and its size, depth and
number of elements are limited. OData v2/v3 documents are refused by name.
"""

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import iterparse

from portal.errors import BackendError
from portal.orgs.types import from_edm

MAX_METADATA_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 32  # CSDL nests about 8 deep; annotation records a few more
MAX_ELEMENTS = 500_000

EDMX_V4 = "http://docs.oasis-open.org/odata/ns/edmx"
EDM_V4 = "http://docs.oasis-open.org/odata/ns/edm"
EDMX_V1_3 = "http://schemas.microsoft.com/ado/2007/06/edmx"  # OData v1 to v3
CORE = "Org.OData.Core.V1"
CAPABILITIES = "Org.OData.Capabilities.V1"
VERSIONS = ("4.0", "4.01")


@dataclass
class CsdlProperty:
    """A structural property of an entity type."""

    name: str
    edm: str  # as declared: "Edm.String", or an enum type's qualified name
    type: str | None  # our attribute type; None when we do not model the Edm type
    maxlength: int | None = None
    precision: int | None = None
    scale: int | None = None
    nullable: bool = True
    enum: str | None = None  # the qualified name of its enum type
    computed: bool = False  # Core.Computed: the server sets it
    immutable: bool = False  # Core.Immutable: set on create, never changed

    @property
    def insertable(self) -> bool:
        """A create may send it."""
        return not self.computed

    @property
    def updatable(self) -> bool:
        """An update may send it."""
        return not (self.computed or self.immutable)


@dataclass
class CsdlLookup:
    """A single-valued navigation property with a ReferentialConstraint: a lookup."""

    name: str
    target: str  # the qualified name of the entity type it points to
    properties: dict[str, str]  # own property -> the target's (key) property


@dataclass
class CsdlEnum:
    """An enum type: its members' names and values."""

    name: str
    members: dict[str, int]
    flags: bool = False


@dataclass
class CsdlEntityType:
    """An entity type: its key properties (in key order), properties and lookups."""

    name: str  # qualified: "Namespace.Name"
    keys: list[str]
    properties: list[CsdlProperty] = field(default_factory=list)
    lookups: list[CsdlLookup] = field(default_factory=list)
    base: str | None = None

    def property(self, name: str) -> CsdlProperty | None:
        """The property of this name, or None."""
        return next((p for p in self.properties if p.name == name), None)


@dataclass
class CsdlCapabilities:
    """What Org.OData.Capabilities says of an entity set (None: it does not say)."""

    change_tracking: bool | None = None  # ChangeTracking/Supported
    insertable: bool = True  # InsertRestrictions/Insertable
    updatable: bool = True  # UpdateRestrictions/Updatable
    deletable: bool = True  # DeleteRestrictions/Deletable
    filterable: bool = True  # FilterRestrictions/Filterable


@dataclass
class CsdlService:
    """What a `$metadata` document declares."""

    version: str
    entity_types: dict[str, CsdlEntityType]
    enums: dict[str, CsdlEnum]
    entity_sets: dict[str, str]  # entity set name -> qualified entity type name
    capabilities: dict[str, CsdlCapabilities] = field(default_factory=dict)  # by entity set

    def capabilities_of(self, entity_set: str) -> CsdlCapabilities:
        """The set's capabilities (all allowed, change tracking unknown, where none are said)."""
        return self.capabilities.get(entity_set) or CsdlCapabilities()


def read_csdl(content: bytes) -> CsdlService:
    """Parse a CSDL XML document; BackendError naming what is wrong with it."""
    root = _parse(content)
    if root.tag == f"{{{EDMX_V1_3}}}Edmx":
        version = _data_service_version(root)
        raise BackendError(f"the service speaks OData v{version}: OData v{version} is not "
                           "supported (the odata backend needs OData v4)")
    if root.tag != f"{{{EDMX_V4}}}Edmx":
        raise BackendError("the $metadata document is not OData CSDL (no edmx:Edmx root)")
    version = root.get("Version", "")
    check_version(version)
    return _Reader(root).service(version)


def check_size(size: int) -> None:
    """Refuse a `$metadata` document (or the part of it read so far) over the size limit."""
    if size > MAX_METADATA_BYTES:
        raise BackendError(f"the $metadata document is larger than "
                           f"{MAX_METADATA_BYTES // (1024 * 1024)} MB: refused")


def check_shape(depth: int, count: int, unit: str) -> None:
    """Refuse a document nested deeper than MAX_DEPTH or with more than MAX_ELEMENTS `unit`.

    `unit`: what the document is made of (XML "elements", JSON "values").
    """
    if depth > MAX_DEPTH:
        raise BackendError(f"the $metadata document nests deeper than {MAX_DEPTH} "
                           f"{unit}: refused")
    if count > MAX_ELEMENTS:
        raise BackendError(f"the $metadata document has more than {MAX_ELEMENTS} "
                           f"{unit}: refused")


def check_version(version: str) -> None:
    """Refuse a CSDL version we do not read."""
    if version not in VERSIONS:
        raise BackendError(f"the $metadata document has CSDL version {version!r}; "
                           f"supported: {', '.join(VERSIONS)}")


def _parse(content: bytes) -> Element:
    check_size(len(content))
    depth = elements = 0
    root: Element | None = None
    try:
        for event, element in iterparse(io.BytesIO(content), events=("start", "end"),
                                        forbid_dtd=True):
            if event == "end":
                depth -= 1
                continue
            root = element if root is None else root
            depth += 1
            elements += 1
            check_shape(depth, elements, "elements")
    except DefusedXmlException as exc:
        raise BackendError(f"the $metadata document declares a DTD or XML entities: refused "
                           f"({exc.__class__.__name__})") from None
    except ParseError as exc:
        raise BackendError(f"the $metadata document is not well-formed XML: {exc}") from None
    if root is None:
        raise BackendError("the $metadata document is empty")
    return root


def _data_service_version(root: Element) -> str:
    """2 or 3, from a v1-v3 document's DataServices element (2 when it does not say)."""
    for element in root.iter():
        for name, value in element.attrib.items():
            if name.endswith("DataServiceVersion") and value[:1] in "123":
                return "3" if value.startswith("3") else "2"
    return "2"


def _edm(tag: str) -> str:
    return f"{{{EDM_V4}}}{tag}"


def _int(value: str | None) -> int | None:
    """A facet's number; "max", "variable", "floating" or nothing read as None."""
    return int(value) if value is not None and value.isdigit() else None


class _Reader:
    """One pass over the schemas, then the external annotations, then base types."""

    def __init__(self, root: Element) -> None:
        self.root = root
        self.aliases: dict[str, str] = {}  # alias -> namespace, of schemas and references
        for include in root.iter(f"{{{EDMX_V4}}}Include"):
            if include.get("Alias"):
                self.aliases[include.get("Alias", "")] = include.get("Namespace", "")
        self.schemas = list(root.iter(_edm("Schema")))
        for schema in self.schemas:
            if schema.get("Alias"):
                self.aliases[schema.get("Alias", "")] = schema.get("Namespace", "")

    def qualified(self, name: str) -> str:
        """A qualified name with its alias (if any) replaced by the namespace."""
        prefix, _, local = name.rpartition(".")
        return f"{self.aliases.get(prefix, prefix)}.{local}" if prefix else name

    def service(self, version: str) -> CsdlService:
        entity_types: dict[str, CsdlEntityType] = {}
        enums: dict[str, CsdlEnum] = {}
        entity_sets: dict[str, str] = {}
        capabilities: dict[str, CsdlCapabilities] = {}
        for schema in self.schemas:
            namespace = schema.get("Namespace", "")
            for element in schema.findall(_edm("EnumType")):
                enum = self.enum(namespace, element)
                enums[enum.name] = enum
        for schema in self.schemas:
            namespace = schema.get("Namespace", "")
            for element in schema.findall(_edm("EntityType")):
                entity_type = self.entity_type(namespace, element, enums)
                entity_types[entity_type.name] = entity_type
            for container in schema.findall(_edm("EntityContainer")):
                for entity_set in container.findall(_edm("EntitySet")):
                    name = entity_set.get("Name", "")
                    entity_sets[name] = self.qualified(entity_set.get("EntityType", ""))
                    self.read_capabilities(entity_set, capabilities.setdefault(
                        name, CsdlCapabilities()))
        for schema in self.schemas:
            for annotations in schema.findall(_edm("Annotations")):
                self.external_annotations(annotations, entity_types)
                # `Target="Ns.Container/Set"`: capabilities of an entity set.
                holder, _, set_name = annotations.get("Target", "").partition("/")
                if set_name in capabilities and "." in holder:
                    self.read_capabilities(annotations, capabilities[set_name])
        return completed(CsdlService(version, entity_types, enums, entity_sets, capabilities))

    def enum(self, namespace: str, element: Element) -> CsdlEnum:
        members: dict[str, int] = {}
        for n, member in enumerate(element.findall(_edm("Member"))):
            value = member.get("Value")
            try:
                members[member.get("Name", "")] = n if value is None else int(value)
            except ValueError:
                raise BackendError(f"enum {namespace}.{element.get('Name')}: member "
                                   f"{member.get('Name')} has value {value!r}, not an integer"
                                   ) from None
        return CsdlEnum(f"{namespace}.{element.get('Name')}", members,
                        element.get("IsFlags") == "true")

    def entity_type(self, namespace: str, element: Element,
                    enums: dict[str, CsdlEnum]) -> CsdlEntityType:
        name = f"{namespace}.{element.get('Name')}"
        keys = [ref.get("Name", "")
                for ref in element.findall(f"{_edm('Key')}/{_edm('PropertyRef')}")]
        base = element.get("BaseType")
        entity_type = CsdlEntityType(name, keys, base=self.qualified(base) if base else None)
        for prop in element.findall(_edm("Property")):
            entity_type.properties.append(self.property(prop, enums))
        for nav in element.findall(_edm("NavigationProperty")):
            target = nav.get("Type", "")
            constraints = {c.get("Property", ""): c.get("ReferencedProperty", "")
                           for c in nav.findall(_edm("ReferentialConstraint"))}
            # A collection is the other side of some lookup; without a constraint
            # there is no property of ours that holds the reference.
            if constraints and not target.startswith("Collection("):
                entity_type.lookups.append(CsdlLookup(nav.get("Name", ""),
                                                      self.qualified(target), constraints))
        return entity_type

    def property(self, element: Element, enums: dict[str, CsdlEnum]) -> CsdlProperty:
        declared = element.get("Type", "")
        qualified = self.qualified(declared)
        enum = enums.get(qualified)
        kind = from_edm(declared)
        prop = CsdlProperty(
            name=element.get("Name", ""), edm=qualified if enum else declared,
            type="picklist" if enum is not None and not enum.flags else (
                kind.name if kind is not None else None),
            maxlength=_int(element.get("MaxLength")), precision=_int(element.get("Precision")),
            scale=_int(element.get("Scale")), nullable=element.get("Nullable") != "false",
            enum=qualified if enum else None)
        for annotation in element.findall(_edm("Annotation")):
            self.annotate(prop, annotation)
        return prop

    def annotate(self, prop: CsdlProperty, annotation: Element) -> None:
        """Apply a Core.Computed / Core.Immutable annotation (unqualified) to a property."""
        if annotation.get("Qualifier"):
            return  # qualified annotations apply to some audience, not to every client
        term = self.qualified(annotation.get("Term", ""))
        if term not in (f"{CORE}.Computed", f"{CORE}.Immutable"):
            return
        value = annotation.get("Bool")
        if value is None:
            child = annotation.find(_edm("Bool"))
            value = child.text if child is not None else "true"  # a tag term means true
        on = (value or "").strip() == "true"
        if term.endswith("Computed"):
            prop.computed = on
        else:
            prop.immutable = on

    def read_capabilities(self, element: Element, found: CsdlCapabilities) -> None:
        """Read the Capabilities annotations (record terms) under an entity set or Annotations."""
        terms = {"ChangeTracking": ("Supported", "change_tracking"),
                 "InsertRestrictions": ("Insertable", "insertable"),
                 "UpdateRestrictions": ("Updatable", "updatable"),
                 "DeleteRestrictions": ("Deletable", "deletable"),
                 "FilterRestrictions": ("Filterable", "filterable")}
        for annotation in element.findall(_edm("Annotation")):
            prefix, _, term = self.qualified(annotation.get("Term", "")).rpartition(".")
            if prefix != CAPABILITIES or term not in terms or annotation.get("Qualifier"):
                continue
            wanted, attribute = terms[term]
            for value in annotation.iter(_edm("PropertyValue")):
                if value.get("Property") == wanted:
                    text = value.get("Bool") or (value.findtext(_edm("Bool")) or "")
                    setattr(found, attribute, text.strip() == "true")

    def external_annotations(self, annotations: Element,
                             entity_types: dict[str, CsdlEntityType]) -> None:
        """`<Annotations Target="Ns.Type/Property">` (CAP's form) of our properties."""
        target = annotations.get("Target", "")
        type_name, _, prop_name = target.partition("/")
        entity_type = entity_types.get(self.qualified(type_name))
        prop = entity_type.property(prop_name) if entity_type and prop_name else None
        if prop is None:
            return  # annotations of other targets: not what sync needs
        for annotation in annotations.findall(_edm("Annotation")):
            self.annotate(prop, annotation)


def completed(service: CsdlService) -> CsdlService:
    """The service read, its entity types given their base types' keys and properties.

    BackendError when a set's type, or a base type, is not declared.
    """
    for entity_type in service.entity_types.values():
        _inherit(entity_type, service.entity_types)
    for name, type_name in service.entity_sets.items():
        if type_name not in service.entity_types:
            raise BackendError(f"entity set {name} is of type {type_name}, "
                               "which the $metadata document does not declare")
    return service


def _inherit(entity_type: CsdlEntityType, entity_types: dict[str, CsdlEntityType]) -> None:
    """Give an entity type the keys and properties of its base types."""
    seen = {entity_type.name}
    base_name = entity_type.base
    while base_name:
        base = entity_types.get(base_name)
        if base is None or base_name in seen:
            raise BackendError(f"entity type {entity_type.name}: base type {base_name} is "
                               "not declared (or is a cycle)")
        seen.add(base_name)
        own = {p.name for p in entity_type.properties}
        entity_type.properties[:0] = [p for p in base.properties if p.name not in own]
        entity_type.lookups[:0] = base.lookups
        entity_type.keys = entity_type.keys or base.keys
        base_name = base.base


def entity_types_of_sets(service: CsdlService) -> Iterator[tuple[str, CsdlEntityType]]:
    """Each entity set with its entity type; a type without a key is refused."""
    for name, type_name in service.entity_sets.items():
        entity_type = service.entity_types[type_name]
        if not entity_type.keys:
            raise BackendError(f"entity set {name}: its type {type_name} declares no key")
        yield name, entity_type
