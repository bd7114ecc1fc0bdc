"""The org admin's forms: each field checked by the data layer's own checks where one exists."""

from typing import Any

from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    Field,
    HiddenField,
    IntegerField,
    PasswordField,
    RadioField,
    SelectField,
    StringField,
    SubmitField,
    TextAreaField,
)
from wtforms.fields.choices import SelectChoice
from wtforms.validators import InputRequired, Length, NumberRange, Optional, ValidationError

from portal.errors import InvalidInput, PortalError
from portal.orgs import application_users, registry
from portal.sync import connections
from portal.sync.filters import MAX_XML_LENGTH
from portal.web.forms import ServerFields, sentence, strip


def options(*pairs: tuple[str, str]) -> list[SelectChoice]:
    """Choices of a select or radio field from (value, label) pairs."""
    return [SelectChoice(value, label) for value, label in pairs]


def _checked(check: Any, value: Any) -> None:
    try:
        check(value)
    except InvalidInput as refused:
        raise ValidationError(sentence(refused.message)) from None


def add_error(form: FlaskForm, refused: PortalError, fields: dict[str, str]) -> None:
    """Show a data-layer refusal beside its field (by `fields`: data-layer name -> form field)."""
    field = getattr(form, fields.get(refused.field or "", ""), None)
    if field is None:
        form.form_errors.append(sentence(refused.message))
    else:
        field.errors = [*field.errors, sentence(refused.message)]


class SignInForm(FlaskForm):
    """Sign in to an org's admin: the org's name, an admin's e-mail and password."""

    organization = StringField("Organization", filters=[strip], validators=[
        InputRequired("Enter your organization's name."), Length(max=63)])
    email = StringField("E-mail", filters=[strip], validators=[
        InputRequired("Enter your e-mail address."), Length(max=254)],
        render_kw={"type": "email"})
    password = PasswordField("Password", validators=[
        InputRequired("Enter your password."), Length(max=1024)])
    next = HiddenField()
    submit = SubmitField("Sign in")

    def validate_organization(self, field: Field) -> None:
        """A name that can be an org's."""
        _checked(registry.check_org_name, field.data)


class ActionForm(FlaskForm):
    """A button that changes something: only the CSRF token is sent with it."""


class EntitiesForm(FlaskForm):
    """Synchronization: enable or disable, or turn Sync Deletion on or off, for many entities."""

    action = SelectField("With the chosen entities", choices=options(
        ("enable", "Enable sync"), ("disable", "Disable sync"),
        ("deletion-on", "Turn Sync Deletion on"), ("deletion-off", "Turn Sync Deletion off")),
        validators=[InputRequired("Choose what to do.")])
    submit = SubmitField("Apply")

    # What each action changes, as configure_entities takes it.
    CHANGES = {"enable": {"enabled": True}, "disable": {"enabled": False},
               "deletion-on": {"sync_deletion": True}, "deletion-off": {"sync_deletion": False}}


class TransactionsForm(FlaskForm):
    """Offline Transactions: Set to Pending, Set to Archived (chosen rows), Set all to Pending."""

    action = SelectField(choices=options(("pending", "Set to Pending"),
                                         ("archived", "Set to Archived"),
                                         ("all-pending", "Set all to Pending")),
                         validators=[InputRequired("Choose what to do.")])


class ScheduleForm(FlaskForm):
    """Sync Job: every N minutes or hours, or daily at HH:MM UTC; active or not."""

    kind = RadioField("Run", choices=options(("every", "Every"), ("daily", "Daily at")),
                      default="every", validators=[InputRequired("Choose how often.")])
    every = StringField("Interval", filters=[strip], validators=[Length(max=6)],
                        render_kw={"min": 1, "inputmode": "numeric"})
    unit = SelectField("Unit", choices=options(("m", "minutes"), ("h", "hours")), default="m")
    daily_at = StringField("Time (UTC)", filters=[strip], validators=[Length(max=5)],
                           render_kw={"placeholder": "HH:MM", "pattern": "[0-2][0-9]:[0-5][0-9]"})
    active = BooleanField("Active")
    submit = SubmitField("Save schedule")

    def validate_every(self, field: Field) -> None:
        """An interval when the job runs every N minutes or hours; at most a week."""
        if self.kind.data != "every":
            return
        if not field.data:
            raise ValidationError("Enter the interval: a whole number.")
        if not field.data.isdigit() or int(field.data) < 1:
            raise ValidationError("Enter a whole number from 1 up to a week.")
        _checked(connections.parse_every, f"{field.data}{self.unit.data}")

    def validate_daily_at(self, field: Field) -> None:
        """HH:MM, 00:00 to 23:59, when the job runs daily."""
        if self.kind.data != "daily":
            return
        if not field.data:
            raise ValidationError("Enter the time as HH:MM (UTC).")
        if not connections.DAILY_RE.match(field.data):
            raise ValidationError("Enter a time from 00:00 to 23:59, as HH:MM (UTC).")

    def schedule(self) -> dict[str, Any]:
        """The form as set_schedule takes it."""
        if self.kind.data == "daily":
            return {"daily_at": self.daily_at.data, "active": self.active.data}
        return {"every_minutes": connections.parse_every(f"{self.every.data}{self.unit.data}"),
                "active": self.active.data}


class SettingsForm(FlaskForm):
    """Connection: how client changes reach the server, and who wins a conflict."""

    write_mode = RadioField("Client changes go to the server", choices=options(
        ("offline", "At the next sync run (offline)"), ("instant", "Instantly")),
        validators=[InputRequired("Choose a write mode.")])
    conflict_policy = SelectField("When both sides changed a record", choices=options(
        (connections.ConflictPolicy.SERVER_WINS, "The server wins"),
        (connections.ConflictPolicy.CLIENT_WINS, "The client wins"),
        (connections.ConflictPolicy.NEWEST_WINS, "The newest change wins")),
        validators=[InputRequired("Choose a conflict policy.")])
    streams = StringField("Entities downloaded at once", filters=[strip],
                          validators=[Length(max=8)],
                          render_kw={"inputmode": "numeric", "placeholder": "default"})
    submit = SubmitField("Save settings")

    def validate_streams(self, field: Field) -> None:
        """1 to MAX_STREAMS, or empty for the portal's default."""
        _checked(connections.check_streams, field.data)


class CredentialsForm(FlaskForm):
    """Connection: the server user name and password."""

    server_username = StringField("Server user name", filters=[strip], validators=[
        InputRequired("Enter the server user name."), Length(max=254)])
    server_password = PasswordField("Server password", validators=[
        InputRequired("Enter the server password."), Length(max=1024)])
    submit = SubmitField("Save credentials")


class ConnectorForm(ServerFields):
    """Connector: connect this org to a server org."""

    submit = SubmitField("Connect")


class FilterXmlForm(FlaskForm):
    """Sync Filter: import a FetchXML <filter> (or <fetch> of this entity)."""

    fetchxml = TextAreaField("FetchXML", validators=[
        InputRequired("Paste a FetchXML <filter>."),
        Length(max=MAX_XML_LENGTH, message="The FetchXML is too long.")],
        render_kw={"rows": 8, "spellcheck": "false"})
    submit = SubmitField("Import")


class LogSearchForm(FlaskForm):
    """Logs: the search, sent as query parameters (GET, so no CSRF token)."""

    class Meta:
        csrf = False

    level = SelectField("Level", choices=options(("", "Any level"), ("info", "Info"),
                                          ("conflict", "Conflict"), ("error", "Error")),
                        validators=[Optional()])
    run = IntegerField("Run", validators=[Optional(), NumberRange(min=1)])
    entity = StringField("Entity", filters=[strip], validators=[Optional(), Length(max=64)])
    text = StringField("Text", filters=[strip], validators=[Optional(), Length(max=200)])
    before = IntegerField(validators=[Optional(), NumberRange(min=1)])


class EntityForm(FlaskForm):
    """Customization: a new entity, with a primary name attribute."""

    logicalname = StringField("Logical name", filters=[strip], validators=[
        InputRequired("Enter the entity's logical name."), Length(max=64)],
        description="Lower-case letters, digits and '_', e.g. cf_project.")
    displayname = StringField("Display name", filters=[strip], validators=[
        InputRequired("Enter the display name."), Length(max=200)])
    submit = SubmitField("Add entity")


class EntityLabelForm(FlaskForm):
    """Customization: an entity's display name."""

    displayname = StringField("Display name", filters=[strip], validators=[
        InputRequired("Enter the display name."), Length(max=200)])
    submit = SubmitField("Save label")


ATTRIBUTE_TYPE_LABELS = (
    ("string", "Text"), ("memo", "Multiple lines of text"), ("integer", "Whole number"),
    ("bigint", "Big whole number"), ("decimal", "Decimal"), ("double", "Floating point"),
    ("money", "Currency"), ("boolean", "Yes/No"), ("datetime", "Date and time"),
    ("picklist", "Choice (option set)"), ("lookup", "Lookup"),
    ("uniqueidentifier", "Unique identifier"))


class AttributeForm(FlaskForm):
    """Customization: a new attribute of an entity."""

    logicalname = StringField("Logical name", filters=[strip], validators=[
        InputRequired("Enter the attribute's logical name."), Length(max=64)])
    displayname = StringField("Display name", filters=[strip], validators=[
        InputRequired("Enter the display name."), Length(max=200)])
    type = SelectField("Type", choices=options(*ATTRIBUTE_TYPE_LABELS), default="string")
    maxlength = StringField("Maximum length (text)", filters=[strip],
                            validators=[Length(max=8)], render_kw={"inputmode": "numeric"})
    options_text = StringField("Options (choice)", filters=[strip], validators=[
        Length(max=4000)], description="value=label, separated by commas: 1=Hot, 2=Warm")
    target = SelectField("Target entity (lookup)", validate_choice=False)
    submit = SubmitField("Add attribute")

    def validate_maxlength(self, field: Field) -> None:
        """A whole number when given."""
        if field.data and not field.data.isdigit():
            raise ValidationError("Enter a whole number.")

    def validate_options_text(self, field: Field) -> None:
        """value=label pairs with whole-number values."""
        for part in filter(None, (p.strip() for p in (field.data or "").split(","))):
            value, _, label = part.partition("=")
            if not value.strip().lstrip("-").isdigit() or not label.strip():
                raise ValidationError(f"Write each option as value=label: {part!r} is not.")

    def options(self) -> list[tuple[int, str]]:
        """The options typed, as (value, label)."""
        pairs = []
        for part in filter(None, (p.strip() for p in (self.options_text.data or "").split(","))):
            value, _, label = part.partition("=")
            pairs.append((int(value), label.strip()))
        return pairs


class TokenForm(FlaskForm):
    """API tokens: a new token for an org user."""

    email = StringField("For the org user (e-mail)", filters=[strip], validators=[
        InputRequired("Enter the e-mail of an org user."), Length(max=254)],
        render_kw={"type": "email"})
    submit = SubmitField("Create token")


class ApplicationUserForm(FlaskForm):
    """Application users: a new OAuth 2.0 client of the org."""

    name = StringField("Name", filters=[strip], validators=[
        InputRequired("Enter a name for the application."),
        Length(max=application_users.MAX_NAME_LENGTH)])
    admin = BooleanField("Administrator (may customize the org)")
    submit = SubmitField("Create application user")


class DisconnectForm(FlaskForm):
    """Disconnect; with changes not on the server yet, the admin confirms they are archived."""

    archive_open = BooleanField("Archive the changes that are not on the server yet")
