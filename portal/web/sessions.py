"""The session cookie: Flask's signed cookie, Secure whenever the request came over HTTPS."""

from flask import Flask, request
from flask.sessions import SecureCookieSessionInterface


class PortalSessionInterface(SecureCookieSessionInterface):
    """SESSION_COOKIE_SECURE None means: Secure when this request is HTTPS."""

    def get_cookie_secure(self, app: Flask) -> bool:
        """The cookie's Secure flag for this response."""
        configured = app.config["SESSION_COOKIE_SECURE"]
        if configured is None:
            return request.is_secure
        return bool(configured)


def init_app(app: Flask) -> None:
    """Use the portal's session interface."""
    app.session_interface = PortalSessionInterface()
