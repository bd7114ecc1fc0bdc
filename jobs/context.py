"""The app context a job runs in: the caller's if there is one, else a fresh portal app."""

from collections.abc import Iterator
from contextlib import contextmanager

from flask import Flask, current_app, has_app_context


@contextmanager
def app_context() -> Iterator[Flask]:
    """Yield the portal app; configured by the worker's environment when none is active."""
    if has_app_context():
        # A test or CLI running the job in-process already chose the instance.
        yield current_app._get_current_object()  # type: ignore[attr-defined]
        return
    from portal import create_app  # not at import time: workers import jobs first

    app = create_app()
    with app.app_context():
        yield app
