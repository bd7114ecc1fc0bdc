"""CRM Sync portal: hosts CRM organizations and keeps them in sync with other CRM orgs."""

import os
from pathlib import Path
from typing import Any

from flask import Flask

from portal import config, db
from portal.extensions import csrf


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the portal: layered config, registry database, blueprints, CLI."""
    instance_path = os.environ.get("PORTAL_INSTANCE_PATH") or str(
        Path(__file__).resolve().parent.parent / "instance"
    )
    if test_config and "INSTANCE_PATH" in test_config:
        instance_path = str(test_config["INSTANCE_PATH"])
    app = Flask(__name__, instance_path=instance_path, instance_relative_config=True)
    app.config.from_mapping(config.defaults())
    app.config.from_pyfile("config.py", silent=True)
    config.check_environment(os.environ, app.default_config)
    app.config.from_prefixed_env("PORTAL")
    if test_config:
        app.config.update(test_config)
    # A wrong setting stops the start here, with its name, not later in a request.
    config.check_settings(app.config, os.environ)
    Path(app.instance_path).mkdir(parents=True, exist_ok=True)
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = config.load_secret_key(app.instance_path)
    if not app.config.get("REDIS_URL"):
        app.config["REDIS_URL"] = os.environ.get("REDIS_URL") or (
            "unix://" + config.bundled_redis_socket(app.instance_path)
        )

    csrf.init_app(app)
    db.init_app(app)

    from portal.web import (
        admin,
        api,
        auth_throttle,
        connect,
        dataverse,
        errors,
        operator,
        public,
        rate_limits,
        service,
        sessions,
        sync_settings,  # noqa: F401  (its routes are on service.bp)
    )

    sessions.init_app(app)
    app.register_blueprint(public.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(operator.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(dataverse.bp)
    app.register_blueprint(dataverse.realm_bp)
    app.register_blueprint(connect.bp)
    app.register_blueprint(service.bp)
    rate_limits.init_app(app)
    auth_throttle.init_app(app)
    errors.init_app(app)

    from portal import cli

    cli.init_app(app)
    return app
