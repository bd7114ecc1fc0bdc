"""Resco's ConnectRequest, read from XML or JSON with the same element names.

XML is parsed by defusedxml (no DTD, no entities, no external references);
unknown elements and over-long values are refused with the element named.
"""

import json
from typing import Any
from xml.etree.ElementTree import Element, ParseError, tostring

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from portal.backends.registry import backend_type
from portal.errors import InvalidInput, PortalError
from portal.orgs import registry
from portal.sync.registration import Registration, ServerValues

MAX_TEXT = 2048
# Resco's four, then ours for Dynamics: an application user (ClientId and
# ClientSecret, instead of UserName and Password), a tenant, and with
# UserName/Password a ClientId alone names the public client of the password flow.
# Salesforce: ClientId and ClientSecret are the connected app's consumer key and secret
# (with UserName and Password: the username-password flow; alone: client credentials),
# SecurityToken the user's token when not appended to the Password.
SETUP_TEXT = ("ProviderID", "Url", "UserName", "Password", "TenantId", "ClientId",
              "ClientSecret", "SecurityToken")
REGISTRATION_TEXT = ("Email", "FirstName", "LastName", "Company", "Password", "JobTitle",
                     "Phone", "Country")
SETUP_ELEMENTS = (*SETUP_TEXT, "RegistrationInfo", "Entities", "SyncFiltersXml")


class Refused(PortalError):
    """A request the service cannot take; `field` names the element."""

    def __init__(self, status: int, code: str, message: str, element: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message, field=element)
        self.status = status
        self.code = code
        self.headers = headers or {}


# SyncSetup elements of an OData v4 server (ProviderID of `odata`): its connection options.
ODATA_ELEMENTS = (("auth", "Auth"), ("token_url", "TokenUrl"), ("scope", "Scope"),
                  ("timestamp_property", "TimestampProperty"),
                  ("client_id_property", "ClientIdProperty"), ("page_size", "PageSize"))


def _is_odata(provider: str) -> bool:
    try:
        return backend_type(provider).key == "odata"
    except InvalidInput:
        return False  # an unknown type is refused where the connection is made


class ConnectRequest:
    """A ConnectRequest's values, read from XML or JSON; element names as Resco's."""

    def __init__(self) -> None:
        self.setup: dict[str, str] = {}
        self.registration: dict[str, str] | None = None
        self.entities: list[str] | None = None
        self.filters_xml: str | None = None

    def text(self, name: str) -> str | None:
        """A SyncSetup text value, stripped; None when absent or empty."""
        return (self.setup.get(name) or "").strip() or None

    def required(self, name: str) -> str:
        """A SyncSetup text value that must be there."""
        value = self.text(name)
        if value is None:
            raise Refused(400, "MissingElement", f"<{name}> is required in <SyncSetup>",
                          f"SyncSetup/{name}")
        return value

    def server_credentials(self) -> tuple[str, str, dict[str, str]]:
        """(user name, password, sign-in options): UserName/Password, or ClientId/ClientSecret."""
        if self.is_salesforce():
            return self.salesforce_credentials()
        options = {"tenant": self.text("TenantId") or ""}
        if self.text("ClientSecret") is not None:
            if self.text("UserName") is not None or self.text("Password") is not None:
                raise Refused(400, "InvalidElement", "send UserName and Password, or ClientId "
                              "and ClientSecret (an application user), not both",
                              "SyncSetup/ClientSecret")
            options["auth"] = "client_credentials"
            return self.required("ClientId"), self.required("ClientSecret"), \
                {k: v for k, v in options.items() if v}
        options["client_id"] = self.text("ClientId") or ""
        return self.required("UserName"), self.required("Password"), \
            {k: v for k, v in options.items() if v}

    def is_salesforce(self) -> bool:
        """The ProviderID names the Salesforce backend."""
        try:
            return backend_type(self.text("ProviderID") or "").key == "salesforce"
        except InvalidInput:
            return False

    def salesforce_credentials(self) -> tuple[str, str, dict[str, str]]:
        """Salesforce's: user, password and the app's ClientId/ClientSecret, or the app alone."""
        options = {"consumer_key": self.text("ClientId") or "",
                   "consumer_secret": self.text("ClientSecret") or "",
                   "security_token": self.text("SecurityToken") or ""}
        if self.text("UserName") is None and self.text("Password") is None:
            return self.required("ClientId"), self.required("ClientSecret"), \
                {"auth": "client_credentials"}
        return self.required("UserName"), self.required("Password"), \
            {k: v for k, v in options.items() if v}

    def registered(self, name: str) -> str | None:
        """A RegistrationInfo text value, stripped; None when absent or empty."""
        return ((self.registration or {}).get(name) or "").strip() or None

    def server(self) -> ServerValues:
        """The server values of SyncSetup; each must be there."""
        provider, url = self.required("ProviderID"), self.required("Url")
        username, password, options = self.server_credentials()
        if _is_odata(provider):
            # OData v4's options (docs/odata.md); Dynamics' tenant and client id are not its.
            given = {option: self.text(element) or "" for option, element in ODATA_ELEMENTS}
            given["auth"] = given["auth"] or options.get("auth", "")  # ClientSecret: client creds
            options = {k: v for k, v in given.items() if v}
        return ServerValues(provider, url, username, password, options)

    def registration_of(self, org: str) -> Registration:
        """A new org's admin (RegistrationInfo: Email and a good Password) and its server."""
        if self.registration is None:
            raise Refused(400, "MissingElement", "<RegistrationInfo> is required to create the "
                          "organization", "SyncSetup/RegistrationInfo")
        for name in ("Email", "Password"):
            if self.registered(name) is None:
                raise Refused(400, "MissingElement", f"<{name}> is required in "
                              "<RegistrationInfo> to create the organization",
                              f"RegistrationInfo/{name}")
        try:
            # Checked here: the data layer's refusal would name the server's Password.
            registry.check_password(self.registered("Password"))
        except InvalidInput as refused:
            raise Refused(400, "InvalidElement", refused.message,
                          "RegistrationInfo/Password") from None
        server = self.server()
        return Registration(
            org=org, email=self.registered("Email") or "",
            password=self.registered("Password") or "", backend=server.backend,
            url=server.url, username=server.username, server_password=server.password,
            server_options=server.options,
            firstname=self.registered("FirstName"), lastname=self.registered("LastName"),
            company=self.registered("Company"), jobtitle=self.registered("JobTitle"),
            phone=self.registered("Phone"), country=self.registered("Country"))


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]  # elements may come in a namespace: only the name counts


def _texts(parent: Element, path: str, allowed: tuple[str, ...]) -> dict[str, Element]:
    found: dict[str, Element] = {}
    for child in parent:
        name = _local(child.tag)
        if name not in allowed:
            raise Refused(400, "UnknownElement", f"<{name}> is not an element of <{path}> "
                          f"(allowed: {', '.join(allowed)})", f"{path}/{name}")
        if name in found:
            raise Refused(400, "DuplicateElement", f"<{name}> appears twice in <{path}>",
                          f"{path}/{name}")
        found[name] = child
    return found


def _leaf(elem: Element, path: str) -> str:
    if len(elem):
        raise Refused(400, "InvalidElement", f"<{path}> must hold text, not elements", path)
    return _short(elem.text or "", f"<{path}>", path)


def _short(text: str, shown: str, path: str) -> str:
    """The text, refused when longer than MAX_TEXT (`shown` names it in the message)."""
    if len(text) > MAX_TEXT:
        raise Refused(400, "InvalidElement", f"{shown} is longer than {MAX_TEXT} characters",
                      path)
    return text


def parse_xml(body: bytes) -> ConnectRequest:
    """A ConnectRequest from XML; no DTD, no entities, unknown elements refused."""
    try:
        root = fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except (DefusedXmlException, ValueError) as exc:
        raise Refused(400, "ForbiddenXml", "DTDs, entities and external references are not "
                      f"allowed ({type(exc).__name__})", "ConnectRequest") from None
    except ParseError as exc:
        raise Refused(400, "MalformedXml", f"the XML is malformed: {exc}",
                      "ConnectRequest") from None
    if _local(root.tag) != "ConnectRequest":
        raise Refused(400, "UnknownElement", f"expected <ConnectRequest>, got "
                      f"<{_local(root.tag)}>", _local(root.tag))
    top = _texts(root, "ConnectRequest", ("SyncSetup",))
    if "SyncSetup" not in top:
        raise Refused(400, "MissingElement", "<SyncSetup> is required in <ConnectRequest>",
                      "ConnectRequest/SyncSetup")
    parsed = ConnectRequest()
    setup = _texts(top["SyncSetup"], "SyncSetup", SETUP_ELEMENTS)
    for name in SETUP_TEXT:
        if name in setup:
            parsed.setup[name] = _leaf(setup[name], f"SyncSetup/{name}")
    if "RegistrationInfo" in setup:
        info = _texts(setup["RegistrationInfo"], "RegistrationInfo", REGISTRATION_TEXT)
        parsed.registration = {name: _leaf(elem, f"RegistrationInfo/{name}")
                               for name, elem in info.items()}
    if "Entities" in setup:
        entities = []
        for child in setup["Entities"]:
            if _local(child.tag) != "Entity":
                raise Refused(400, "UnknownElement", f"<{_local(child.tag)}> is not allowed in "
                              "<Entities> (only <Entity>)", "SyncSetup/Entities")
            entities.append(_leaf(child, "SyncSetup/Entities/Entity").strip())
        parsed.entities = entities
    if "SyncFiltersXml" in setup:
        holder = setup["SyncFiltersXml"]
        # The FetchXML comes as text (escaped or CDATA) or as a <fetch> element inside.
        if len(holder):
            fetches = [c for c in holder if _local(c.tag) == "fetch"]
            if len(fetches) != 1 or len(holder) != 1:
                raise Refused(400, "InvalidElement", "<SyncFiltersXml> holds one <fetch> "
                              "document (as text or as an element)", "SyncSetup/SyncFiltersXml")
            parsed.filters_xml = tostring(fetches[0], encoding="unicode")
        else:
            parsed.filters_xml = (holder.text or "").strip() or None
    return parsed


def _json_texts(value: Any, path: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Refused(400, "InvalidElement", f"{path} must be an object", path)
    for name in value:
        if name not in allowed:
            raise Refused(400, "UnknownElement", f"{name!r} is not an element of {path} "
                          f"(allowed: {', '.join(allowed)})", f"{path}/{name}")
    return value


def _json_text(value: Any, path: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise Refused(400, "InvalidElement", f"{path} must be a string", path)
    return _short(value, path, path)


def parse_json(body: bytes) -> ConnectRequest:
    """A ConnectRequest from JSON: {"SyncSetup": {...}}, optionally inside "ConnectRequest"."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise Refused(400, "MalformedJson", f"the JSON is malformed: {exc}",
                      "ConnectRequest") from None
    if isinstance(document, dict) and set(document) == {"ConnectRequest"}:
        document = document["ConnectRequest"]
    document = _json_texts(document, "ConnectRequest", ("SyncSetup",))
    if "SyncSetup" not in document:
        raise Refused(400, "MissingElement", "SyncSetup is required in the ConnectRequest",
                      "ConnectRequest/SyncSetup")
    setup = _json_texts(document["SyncSetup"], "SyncSetup", SETUP_ELEMENTS)
    parsed = ConnectRequest()
    for name in SETUP_TEXT:
        if name in setup:
            parsed.setup[name] = _json_text(setup[name], f"SyncSetup/{name}")
    if setup.get("RegistrationInfo") is not None:
        info = _json_texts(setup["RegistrationInfo"], "RegistrationInfo", REGISTRATION_TEXT)
        parsed.registration = {name: _json_text(value, f"RegistrationInfo/{name}")
                               for name, value in info.items()}
    if setup.get("Entities") is not None:
        entities = setup["Entities"]
        if isinstance(entities, dict) and set(entities) == {"Entity"}:
            entities = entities["Entity"]  # the XML's shape, written as JSON
        if not isinstance(entities, list):
            raise Refused(400, "InvalidElement", "Entities must be a list of entity names",
                          "SyncSetup/Entities")
        parsed.entities = [_json_text(e, "SyncSetup/Entities/Entity").strip() for e in entities]
    if setup.get("SyncFiltersXml") is not None:
        parsed.filters_xml = _json_text(setup["SyncFiltersXml"],
                                        "SyncSetup/SyncFiltersXml").strip() or None
    return parsed


