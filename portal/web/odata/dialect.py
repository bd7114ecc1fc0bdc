"""The two dialects of the one OData server: the Org API and the Dataverse Web API.

A dialect is data, not code: where an org's service root is, which
credentials it takes, how a lookup is named in records, whether Dataverse's
annotations and WhoAmI are served, the shape of its 401, its error codes
and its paging limits. Every handler in portal/web/odata reads `req.dialect`; no module is
copied per dialect.
"""

from dataclasses import dataclass
from enum import StrEnum


class AuthKind(StrEnum):
    """A kind of credentials a dialect accepts."""

    BASIC = "basic"  # an org user's e-mail and password
    API_TOKEN = "api-token"  # Bearer crm_... from portal.orgs.tokens
    OAUTH = "oauth"  # Bearer access token from the org's OAuth 2.0 token endpoint


@dataclass(frozen=True)
class Dialect:
    """How one flavour of the OData server answers."""

    name: str
    # An org's service root below the portal's base URL; {org} is the org's name.
    root: str
    auth_kinds: frozenset[AuthKind]
    # The JSON name of a lookup's GUID in records, {name} its logical name:
    # Resco keeps the logical name, Dataverse says _{name}_value.
    lookup_property: str
    # Dataverse's instance annotations (lookuplogicalname, FormattedValue...)
    # when Prefer: odata.include-annotations asks for them.
    annotations: bool
    # $expand of navigation properties (single- and collection-valued, nested).
    expand: bool
    # Dataverse's functions (WhoAmI) at the service root, bulk actions on entity sets and
    # query functions in $filter (Microsoft.Dynamics.CRM.In(...)).
    functions: bool
    # Dataverse's FetchXML queries: GET {set}?fetchXml=...
    fetchxml: bool
    # Custom query options that mean a query the dialect does not serve: 501, not ignored.
    unserved_options: frozenset[str]
    # POST answers 201 with the record (OData's default) or 204 (Dataverse's,
    # unless Prefer: return=representation).
    create_returns_record: bool
    # The 401 challenge: Basic with a realm, or Bearer naming the org's authority.
    bearer_challenge: bool
    # Which column of messages.ERROR_CODES its error bodies take their codes from.
    error_codes: str
    # Server paging: the page size without Prefer: odata.maxpagesize, and the most it may ask.
    default_page_size: int
    max_page_size: int
    # Per-user service protection limits (429) may apply (settings decide if they do).
    service_protection: bool
    # N:N rows written only by associating their two records (`$ref`), never directly.
    associations: bool = False

    def service_root(self, base_url: str, org: str) -> str:
        """The absolute service root of an org; `base_url` ends with '/'."""
        return base_url + self.root.format(org=org)

    def lookup_key(self, name: str) -> str:
        """The JSON name of a lookup attribute in records."""
        return self.lookup_property.format(name=name)


ORG_API = Dialect(
    name="org-api",
    root="odata/v4/{org}/",
    auth_kinds=frozenset({AuthKind.BASIC, AuthKind.API_TOKEN}),
    lookup_property="{name}",
    annotations=False,
    expand=False,
    functions=False,
    fetchxml=False,
    unserved_options=frozenset(),
    create_returns_record=True,
    bearer_challenge=False,
    error_codes="odata",
    default_page_size=1000,  # as Resco Cloud
    max_page_size=5000,
    service_protection=False,
)

DATAVERSE = Dialect(
    name="dataverse",
    root="dataverse/{org}/api/data/v9.2/",
    auth_kinds=frozenset({AuthKind.OAUTH}),
    lookup_property="_{name}_value",
    annotations=True,
    expand=True,
    functions=True,
    fetchxml=True,
    unserved_options=frozenset({"sql"}),  # Dataverse's SQL over the Web API
    create_returns_record=False,
    bearer_challenge=True,
    error_codes="dataverse",
    # Dataverse pages 5,000 records unless odata.maxpagesize asks for fewer.
    default_page_size=5000,
    max_page_size=5000,
    service_protection=True,
    associations=True,
)
