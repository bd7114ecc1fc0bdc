"""Pages anyone may see: the home page and the health check."""

from flask import Blueprint, current_app, jsonify, render_template
from flask.typing import ResponseReturnValue

from portal.db import get_db, ping
from portal.orgs.templates import TEMPLATES
from portal.queue import get_redis

bp = Blueprint("public", __name__)


@bp.get("/")
def home() -> ResponseReturnValue:
    """What the portal is, and what it offers."""
    return render_template("public/home.html", templates=sorted(TEMPLATES))


@bp.get("/health")
def health() -> ResponseReturnValue:
    """Database and Redis reachability as JSON: 200 when both answer, else 503."""
    checks: dict[str, str] = {}
    try:
        ping(get_db())
        checks["database"] = "ok"
    except Exception as exc:  # a health check reports any failure instead of raising
        current_app.logger.warning("health: database: %s", exc)
        checks["database"] = f"error: {exc.__class__.__name__}"
    try:
        get_redis().ping()
        checks["redis"] = "ok"
    except Exception as exc:  # likewise: unreachable Redis is a 503, not a 500
        current_app.logger.warning("health: redis: %s", exc)
        checks["redis"] = f"error: {exc.__class__.__name__}"
    healthy = all(v == "ok" for v in checks.values())
    return jsonify(status="ok" if healthy else "unavailable", **checks), 200 if healthy else 503
