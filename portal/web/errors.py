"""Error answers: an HTML page for people, a JSON body for machines, never a stack trace."""

from flask import Flask, jsonify, make_response, render_template, request
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from portal.errors import PortalError


def wants_json() -> bool:
    """True when the caller is a program (JSON accepted over HTML, or a JSON path)."""
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return request.path == "/health" or best == "application/json"


def _answer(status: int, title: str, message: str) -> ResponseReturnValue:
    if wants_json():
        return jsonify(error={"code": title.replace(" ", ""), "message": message}), status
    return render_template("errors/error.html", status=status, title=title,
                           message=message), status


def init_app(app: Flask) -> None:
    """Register the portal's error handlers."""

    @app.errorhandler(PortalError)
    def portal_error(error: PortalError) -> ResponseReturnValue:
        return _answer(error.status, error.code, error.message)

    @app.errorhandler(CSRFError)
    def csrf_error(error: CSRFError) -> ResponseReturnValue:
        return _answer(400, "Form expired",
                       "The form was missing its security token or it expired. "
                       "Go back, reload the page and send it again.")

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> ResponseReturnValue:
        answer = make_response(_answer(error.code or 500, error.name,
                                       error.description or error.name))
        # Keep what the error says in headers: Retry-After of a 429, Allow of a 405.
        for name, value in error.get_headers():
            if name.lower() != "content-type":
                answer.headers[name] = value
        return answer

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> ResponseReturnValue:
        app.logger.exception("unhandled error on %s %s", request.method, request.path)
        return _answer(500, "Internal Server Error",
                       "Something went wrong on our side; it has been logged.")
