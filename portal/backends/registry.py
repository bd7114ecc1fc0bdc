"""The backend types a connection can use, with their fixed ProviderID GUIDs.

The seed's ProviderID 60650fb3-5d8b-45dd-b82e-459f3b019e9a is Dynamics CRM /
Dataverse, as in Resco's ConnectRequest. A type whose backend is not built
yet is listed (so its ProviderID is recognised) but refused with that reason.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from portal.backends.base import Backend
from portal.backends.dynamics import DynamicsBackend
from portal.backends.dynamics import check_options as check_dynamics_options
from portal.backends.odata_v4 import ODataV4Backend
from portal.backends.odata_v4 import check_options as check_odata_options
from portal.backends.resco import RescoBackend
from portal.backends.salesforce import SECRET_OPTIONS as SALESFORCE_SECRETS
from portal.backends.salesforce import SalesforceBackend
from portal.backends.salesforce import check_options as check_salesforce_options
from portal.errors import InvalidInput, NotAvailable


@dataclass(frozen=True)
class BackendType:
    """A kind of server org the portal can connect to."""

    key: str
    name: str
    provider_id: str
    make: Callable[..., Backend] | None  # (url, username, password, **options)

    @property
    def available(self) -> bool:
        """True when this portal has the backend for this type."""
        return self.make is not None


BACKEND_TYPES = (
    BackendType("resco", "Resco Cloud", "3b2f3c1e-7f0c-4f4b-9a57-1c2d3e4f5a6b", RescoBackend),
    BackendType("dynamics", "Dynamics CRM", "60650fb3-5d8b-45dd-b82e-459f3b019e9a",
                DynamicsBackend),
    BackendType("odata", "OData v4", "9c1d6a53-2f7e-4b8a-8e1f-0a4b5c6d7e8f", ODataV4Backend),
    BackendType("salesforce", "Salesforce", "d5a7e2c4-6b1f-4e3a-9c8d-2f4e6a8b0c1d",
                SalesforceBackend),
)


def backend_type(key_or_provider_id: str) -> BackendType:
    """The type named by its key ('resco') or ProviderID GUID; InvalidInput otherwise."""
    wanted = (key_or_provider_id or "").strip().strip("{}").lower()
    for kind in BACKEND_TYPES:
        if wanted in (kind.key, kind.provider_id):
            return kind
    raise InvalidInput(f"unknown backend type {key_or_provider_id!r} (one of "
                       f"{', '.join(t.key for t in BACKEND_TYPES)})", field="backend")


def available_types() -> list[BackendType]:
    """The types a connection can be made with on this portal."""
    return [t for t in BACKEND_TYPES if t.available]


def available_backend(key_or_provider_id: str) -> BackendType:
    """The backend type named, refused if unknown or (NotAvailable) not built on this portal."""
    kind = backend_type(key_or_provider_id)
    if kind.make is None:
        raise NotAvailable(f"the {kind.name} backend ({kind.provider_id}) is not available on "
                           "this portal yet", field="backend")
    return kind


def check_options(kind: str, options: dict[str, str] | None) -> dict[str, str]:
    """A backend type's sign-in options checked (Dynamics', OData's, Salesforce's); empty ones
    dropped."""
    options = {k: v.strip() for k, v in (options or {}).items() if v and v.strip()}
    if available_backend(kind).key == "dynamics":
        return check_dynamics_options(options)
    if available_backend(kind).key == "odata":
        return check_odata_options(options)
    if available_backend(kind).key == "salesforce":
        return check_salesforce_options(options)
    if options:
        raise InvalidInput(f"the {backend_type(kind).name} backend takes no sign-in options "
                           f"({', '.join(sorted(options))})", field="auth")
    return options


def secret_options(kind: str) -> frozenset[str]:
    """The sign-in options of a backend type that are secrets (stored encrypted)."""
    return SALESFORCE_SECRETS if backend_type(kind).key == "salesforce" else frozenset()


def make_backend(kind: str, url: str, username: str, password: str,
                 **options: Any) -> Backend:
    """A backend of this type for one server org (options: e.g. retries)."""
    make = available_backend(kind).make
    assert make is not None
    return make(url, username, password, **options)


def stream_limit(kind: str) -> tuple[int, str]:
    """The most entities a backend type reads at once, and why (its class's max_streams)."""
    return cast(type[Backend], available_backend(kind).make).most_streams()
