"""Customization of an org that is not the client of a connection: entities and attributes.

The same data layer as the API's $customization (portal.orgs.schema), with its
refusals shown beside the fields; a client org's customization is refused
with the reason (its metadata comes from the server), here as in the API.
"""

from typing import Any

from flask import abort, flash, g, redirect, render_template, url_for
from flask.typing import ResponseReturnValue

from portal.errors import InvalidInput, MetadataChangeRefused, NotFound
from portal.orgs import schema
from portal.orgs.metadata import Attribute, Entity, Option
from portal.web.admin import bp
from portal.web.admin.forms import (
    ActionForm,
    AttributeForm,
    EntityForm,
    EntityLabelForm,
    add_error,
)
from portal.web.admin.sync import TABS, _org, run_state

ENTITY_FIELDS = {"entity": "logicalname", "logicalname": "logicalname",
                 "entitysetname": "logicalname", "primaryidattribute": "logicalname"}
ATTRIBUTE_FIELDS = {"attribute": "logicalname", "type": "type", "maxlength": "maxlength",
                    "options": "options_text", "targets": "target"}


def _refusal() -> str | None:
    try:
        schema.check_customizable(_org())
    except MetadataChangeRefused as refused:
        return refused.message[:1].upper() + refused.message[1:] + "."
    return None


def _page(template: str, status: int = 200, **context: Any) -> ResponseReturnValue:
    return render_template(template, connection=g.connection, tabs=TABS,
                           run=run_state(g.connection), action_form=ActionForm(),
                           refusal=_refusal(), **context), status


def _refuse_if_client() -> None:
    reason = _refusal()
    if reason:
        abort(409, reason)


def _entity(name: str) -> Entity:
    try:
        return _org().entity(name)
    except NotFound:
        abort(404, f"The organization has no entity {name!r}.")


@bp.route("/<org>/customization", methods=["GET", "POST"])
def customization(org: str) -> ResponseReturnValue:
    """Customization: the org's entities; add one."""
    form = EntityForm()
    if form.validate_on_submit():
        _refuse_if_client()
        try:
            added = schema.add_entity(_org(), Entity(
                form.logicalname.data, form.displayname.data, {"1033": form.displayname.data},
                primarynameattribute="name", attributes=[
                    Attribute("name", "string", "Name", {"1033": "Name"}, maxlength=200)]))
        except InvalidInput as refused:
            add_error(form, refused, ENTITY_FIELDS)
        else:
            flash(f"Entity {added.logicalname} added.", "info")
            return redirect(url_for("admin.customize_entity", org=org, entity=added.logicalname))
    return _page("admin/customization.html", 400 if form.errors else 200, form=form,
                 entities=list(_org().entities().values()))


@bp.route("/<org>/customization/<entity>", methods=["GET", "POST"])
def customize_entity(org: str, entity: str) -> ResponseReturnValue:
    """Customization of one entity: its label, its attributes; add one."""
    definition = _entity(entity)
    label_form = EntityLabelForm(formdata=None, data={"displayname": definition.displayname})
    form = AttributeForm()
    form.target.choices = [(n, n) for n in _org().entities()]  # type: ignore[assignment]
    if form.validate_on_submit():
        _refuse_if_client()
        kind = form.type.data
        attr = Attribute(
            form.logicalname.data, kind, form.displayname.data, {"1033": form.displayname.data},
            maxlength=int(form.maxlength.data) if form.maxlength.data else None,
            options=[Option(v, label, {"1033": label}) for v, label in form.options()]
            if kind == "picklist" else [],
            targets=[form.target.data] if kind == "lookup" and form.target.data else [])
        try:
            schema.add_attribute(_org(), entity, attr)
        except InvalidInput as refused:
            add_error(form, refused, ATTRIBUTE_FIELDS)
        else:
            flash(f"Attribute {entity}.{attr.logicalname} added.", "info")
            return redirect(url_for("admin.customize_entity", org=org, entity=entity))
    return _page("admin/customize_entity.html", 400 if form.errors else 200, entity=definition,
                 form=form, label_form=label_form)


@bp.post("/<org>/customization/<entity>/label")
def relabel_entity(org: str, entity: str) -> ResponseReturnValue:
    """Change an entity's display name."""
    _entity(entity)
    form = EntityLabelForm()
    if not form.validate_on_submit():
        abort(400, "; ".join(e for errors in form.errors.values() for e in errors))
    _refuse_if_client()
    schema.update_entity(_org(), entity, displayname=form.displayname.data,
                         labels={"1033": form.displayname.data})
    flash(f"Entity {entity} relabelled.", "info")
    return redirect(url_for("admin.customize_entity", org=org, entity=entity))


@bp.post("/<org>/customization/<entity>/attributes/<attribute>/remove")
def remove_attribute(org: str, entity: str, attribute: str) -> ResponseReturnValue:
    """Remove an attribute and its values."""
    if _entity(entity).attribute(attribute) is None:
        abort(404, f"{entity} has no attribute {attribute!r}.")
    ActionForm().validate_on_submit() or abort(400)
    _refuse_if_client()
    schema.remove_attribute(_org(), entity, attribute)
    flash(f"Attribute {entity}.{attribute} removed.", "info")
    return redirect(url_for("admin.customize_entity", org=org, entity=entity))


@bp.post("/<org>/customization/<entity>/remove")
def remove_entity(org: str, entity: str) -> ResponseReturnValue:
    """Remove an entity with its records."""
    _entity(entity)
    ActionForm().validate_on_submit() or abort(400)
    _refuse_if_client()
    schema.remove_entity(_org(), entity)
    flash(f"Entity {entity} removed with its records.", "info")
    return redirect(url_for("admin.customization", org=org))
