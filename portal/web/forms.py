"""The portal's forms: each field checked by the same functions the data layer uses."""

from typing import Any

from flask import current_app
from flask_wtf import FlaskForm
from wtforms import BooleanField, Field, PasswordField, SelectField, StringField, SubmitField
from wtforms.validators import EqualTo, InputRequired, Length, Optional, ValidationError

from portal.backends.odata_mapping import names_per_set
from portal.backends.registry import BACKEND_TYPES, available_backend, check_options
from portal.backends.server_urls import check_server_url
from portal.db import get_db
from portal.errors import InvalidInput, NotFound
from portal.orgs import registry
from portal.sync.registration import Registration

# Which form field a data-layer refusal (InvalidInput.field) belongs beside.
FIELD_OF_ERROR = {"name": "organization", "email": "email", "password": "password",
                  "backend": "backend", "url": "server_url", "username": "server_username",
                  "auth": "server_auth", "tenant": "server_tenant",
                  "authority": "server_tenant", "client_id": "server_client_id",
                  "consumer_key": "server_consumer_key",
                  "consumer_secret": "server_consumer_secret",
                  "security_token": "server_security_token", "api_budget": "server_auth",
                  "token_url": "odata_token_url", "page_size": "odata_page_size",
                  "timestamp_property": "odata_timestamp_property"}
# How a Dynamics or Salesforce connection signs in (the backends' AUTH_KINDS).
SIGN_INS: list[tuple[str, str, dict[str, Any]]] = [
    ("password", "User name and password", {}),
    ("client_credentials", "Application user (client id and secret)", {}),
    ("jwt", "Salesforce JWT bearer (the private key as the password)", {})]
# The sign-in options of Salesforce, by form field (portal.backends.salesforce.OPTIONS).
SALESFORCE_FIELDS = {"consumer_key": "server_consumer_key",
                     "consumer_secret": "server_consumer_secret",
                     "security_token": "server_security_token"}
# How an OData v4 connection signs in (portal.backends.odata_v4.AUTH_KINDS).
ODATA_SIGN_INS: list[tuple[str, str, dict[str, Any]]] = [
    ("basic", "User name and password (Basic)", {}),
    ("bearer", "Bearer token (in the password field)", {}),
    ("client_credentials", "OAuth 2.0 client credentials (client id and secret)", {})]


def _checked(check: Any, value: Any) -> None:
    try:
        check(value)
    except InvalidInput as refused:
        raise ValidationError(sentence(refused.message)) from None


def strip(value: Any) -> Any:
    """Leading and trailing spaces removed from text, as people paste it."""
    return value.strip() if isinstance(value, str) else value


def sentence(message: str) -> str:
    """A data-layer message as shown beside a field: capitalised."""
    return message[:1].upper() + message[1:]


def backend_choices() -> list[tuple[str, str, dict[str, Any]]]:
    """Every backend type by display name; the ones not built yet are shown but disabled."""
    return [(t.key, t.name if t.available else f"{t.name} (coming soon)",
             {} if t.available else {"disabled": True}) for t in BACKEND_TYPES]


class ServerFields(FlaskForm):
    """Backend Login: the server org's type, URL and credentials."""

    backend = SelectField("Type", default="resco")
    server_url = StringField("URL", filters=[strip], validators=[
        InputRequired("Enter the server's URL."), Length(max=2048)],
                             render_kw={"type": "url", "placeholder":
                                        "https://server.example.com/odata/v4/myorg/"})
    server_username = StringField("Username", filters=[strip], validators=[
        InputRequired("Enter the server user name."), Length(max=254)])
    server_password = PasswordField("Password", validators=[
        InputRequired("Enter the server password."), Length(max=1024)],
        description="For a Dynamics application user: the client id above, its secret here.")
    server_auth = SelectField("Sign-in (Dynamics, Salesforce)", default="password")
    server_tenant = StringField("Tenant (Dynamics, optional)", filters=[strip], validators=[
        Optional(), Length(max=254)], description="The directory (tenant) id or domain, "
        "e.g. contoso.onmicrosoft.com. Left empty, the environment names its own.")
    server_client_id = StringField("Public client id (Dynamics, optional)", filters=[strip],
                                   validators=[Optional(), Length(max=100)],
                                   description="For a user name and password only; empty: "
                                   "the id Microsoft's samples use.")
    server_consumer_key = StringField("Consumer key (Salesforce)", filters=[strip], validators=[
        Optional(), Length(max=256)], description="The connected app's consumer key.")
    server_consumer_secret = PasswordField("Consumer secret (Salesforce)", validators=[
        Optional(), Length(max=256)], description="For a user name and password; kept "
        "encrypted.")
    server_security_token = PasswordField("Security token (Salesforce, optional)", validators=[
        Optional(), Length(max=256)], description="Or append it to the password.")

    odata_auth = SelectField("Sign-in (OData v4)", default="basic")
    odata_token_url = StringField("Token URL (OData v4, client credentials)", filters=[strip],
                                  validators=[Optional(), Length(max=2048)])
    odata_timestamp_property = StringField(
        "Modified timestamp (OData v4, optional)", filters=[strip],
        validators=[Optional(), Length(max=1024)],
        description="Empty: found by name (modifiedAt, ModifiedOn, LastModifiedDateTime…). "
                    "One name for every set, or per set: Orders=changedAt, Items=stamp.")
    odata_client_id_property = StringField(
        "Client id property (OData v4, optional)", filters=[strip],
        validators=[Optional(), Length(max=1024)],
        description="Where the service picks keys: the String property keeping our GUID. "
                    "One name for every such set, or per set: Tickets=clientRef.")
    odata_page_size = StringField("Page size (OData v4, optional)", filters=[strip],
                                  validators=[Optional(), Length(max=5)])

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.backend.choices = backend_choices()  # type: ignore[assignment]
        self.server_auth.choices = SIGN_INS  # type: ignore[assignment]
        self.odata_auth.choices = ODATA_SIGN_INS  # type: ignore[assignment]

    def validate_backend(self, field: Field) -> None:
        """A known type whose backend this portal has."""
        _checked(available_backend, field.data)

    def validate_server_url(self, field: Field) -> None:
        """http(s), a host, and (unless the operator allows it) a public address."""
        _checked(lambda url: check_server_url(
            url, allow_private=current_app.config["ALLOW_PRIVATE_SERVERS"]), field.data)

    def validate_server_tenant(self, field: Field) -> None:
        """Checked as the data layer checks it, for the type chosen."""
        if self.backend.data == "dynamics":
            _checked(lambda _: check_options(self.backend.data, self.server_options()),
                     field.data)

    def validate_server_consumer_key(self, field: Field) -> None:
        """Salesforce's options, checked as the data layer checks them."""
        if self.backend.data == "salesforce":
            _checked(lambda _: check_options(self.backend.data, self.server_options()),
                     field.data)

    def validate_odata_page_size(self, field: Field) -> None:
        """OData's options, checked as the data layer checks them."""
        if self.backend.data == "odata":
            _checked(lambda _: check_options(self.backend.data, self.server_options()),
                     field.data)

    def validate_odata_timestamp_property(self, field: Field) -> None:
        """One name, or EntitySet=name items, as the odata backend reads them."""
        if self.backend.data == "odata":
            _checked(lambda value: names_per_set(value, "timestamp_property"), field.data)

    def validate_odata_client_id_property(self, field: Field) -> None:
        """One name, or EntitySet=name items, as the odata backend reads them."""
        if self.backend.data == "odata":
            _checked(lambda value: names_per_set(value, "client_id_property"), field.data)

    def server_options(self) -> dict[str, str]:
        """The sign-in options of the chosen type (Dynamics', Salesforce's, OData's)."""
        if self.backend.data == "salesforce":
            options = {"auth": self.server_auth.data or "password",
                       **{k: getattr(self, f).data or "" for k, f in SALESFORCE_FIELDS.items()}}
            return {k: v for k, v in options.items() if v}
        if self.backend.data == "odata":
            options = {"auth": self.odata_auth.data or "basic",
                       "token_url": self.odata_token_url.data or "",
                       "timestamp_property": self.odata_timestamp_property.data or "",
                       "client_id_property": self.odata_client_id_property.data or "",
                       "page_size": self.odata_page_size.data or ""}
            return {k: v for k, v in options.items() if v}
        if self.backend.data != "dynamics":
            return {}
        options = {"auth": self.server_auth.data or "password",
                   "tenant": self.server_tenant.data or "",
                   "client_id": self.server_client_id.data or ""}
        return {k: v for k, v in options.items() if v}

    def add_error(self, refused: InvalidInput) -> None:
        """Show a refusal of the data layer beside its field (or above the form)."""
        name = FIELD_OF_ERROR.get(refused.field or "")
        field = getattr(self, name, None) if name else None
        if field is None:
            self.form_errors.append(sentence(refused.message))
        else:
            field.errors = [*field.errors, sentence(refused.message)]


class ConnectForm(ServerFields):
    """The connect page: a new client org (Login Info, Detail Info) and its server."""

    organization = StringField("Organization", filters=[strip], validators=[InputRequired(
        "Enter a name for your organization."), Length(max=63)],
        description="Lower-case letters, digits and '-'; it becomes your org's address.")
    email = StringField("E-mail", filters=[strip], validators=[
        InputRequired("Enter your e-mail address."), Length(max=254)], render_kw={"type": "email"})
    password = PasswordField("Password", validators=[InputRequired("Choose a password.")],
                             description="At least 8 characters, letters and digits.")
    confirm = PasswordField("Confirm password", validators=[
        InputRequired("Type the password again."),
        EqualTo("password", "The two passwords do not match.")])
    firstname = StringField("First name", validators=[Optional(), Length(max=100)])
    lastname = StringField("Last name", validators=[Optional(), Length(max=100)])
    company = StringField("Company", validators=[Optional(), Length(max=200)])
    jobtitle = StringField("Job title", validators=[Optional(), Length(max=100)])
    phone = StringField("Phone", validators=[Optional(), Length(max=50)],
                        render_kw={"type": "tel"})
    country = StringField("Country", validators=[Optional(), Length(max=100)])
    consent = BooleanField(
        "I agree that this portal stores my details and the server credentials (encrypted) "
        "and copies the server's metadata and data into my organization.",
        validators=[InputRequired("Tick the box to agree, or the portal cannot connect.")])
    submit = SubmitField("Connect")

    def validate_organization(self, field: Field) -> None:
        """A valid address that no org has yet."""
        _checked(registry.check_org_name, field.data)
        try:
            registry.get_org(get_db(), field.data)
        except NotFound:
            return
        raise ValidationError(f"The organization name {field.data!r} is taken.")

    def validate_email(self, field: Field) -> None:
        """An e-mail address."""
        _checked(registry.check_email, field.data)

    def validate_password(self, field: Field) -> None:
        """Strong enough: 8 characters or more, letters and digits."""
        _checked(registry.check_password, field.data)

    def registration(self) -> Registration:
        """The form's values as the data layer takes them."""
        def text(field: Field) -> str | None:
            return (field.data or "").strip() or None

        return Registration(
            org=self.organization.data, email=self.email.data,
            password=self.password.data, backend=self.backend.data,
            url=self.server_url.data, username=self.server_username.data,
            server_password=self.server_password.data, server_options=self.server_options(),
            firstname=text(self.firstname), lastname=text(self.lastname),
            company=text(self.company), jobtitle=text(self.jobtitle),
            phone=text(self.phone), country=text(self.country))


class ResumeForm(FlaskForm):
    """Run a failed connect again with the same server values (it resumes)."""

    submit = SubmitField("Resume")


class RetryForm(ServerFields):
    """Fix a failed connection's server values and connect again."""

    submit = SubmitField("Try again")
