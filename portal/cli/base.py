"""What every `flask` command shares: refused input exits 1 with its reason, ids, one-of options.

A command of a `PortalGroup` turns a `PortalError` raised anywhere below it
into a `click.ClickException`, so the data layer's own message is what the
user reads ("Error: …", exit code 1) and nothing has been written.
"""

from dataclasses import dataclass
from typing import Any

import click
from flask.cli import AppGroup

from portal.errors import PortalError


class Refused(click.UsageError):
    """A command line the portal refuses: shown with the usage, exit 1 like any refused input."""

    exit_code = 1


@dataclass(frozen=True)
class OneOf:
    """Parameters of which a command line must give exactly one, and what to say otherwise."""

    names: tuple[str, ...]
    none: str  # the message when none is given
    many: str | None = None  # the message when more than one is (default: `none`)

    def check(self, ctx: click.Context) -> None:
        """Refuse the command line unless exactly one of the parameters was given."""
        given = [name for name in self.names
                 if ctx.get_parameter_source(name) not in (None, click.ParameterSource.DEFAULT)]
        if len(given) != 1:
            raise Refused(self.none if not given else self.many or self.none, ctx=ctx)


class PortalCommand(click.Command):
    """A command whose PortalErrors print their message and exit 1; optionally with a OneOf."""

    def __init__(self, *args: Any, one_of: OneOf | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.one_of = one_of

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Parse as click does, then check the one-of parameters before the command runs."""
        rest = super().parse_args(ctx, args)
        if self.one_of is not None:
            self.one_of.check(ctx)
        return rest

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; a refused input becomes click's error (message, exit 1)."""
        try:
            return super().invoke(ctx)
        except PortalError as error:
            raise click.ClickException(error.message) from error


class PortalGroup(AppGroup):
    """A group of commands run in the app context, each a PortalCommand."""

    command_class = PortalCommand


class Id(click.IntRange):
    """A positive integer id of a kind of thing; anything else is refused, naming the thing."""

    def __init__(self, noun: str) -> None:
        super().__init__(min=1)
        self.noun = noun

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        """The id as an int; Refused (exit 1) for anything but a positive integer."""
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter:
            raise Refused(f"{value!r} is not a {self.noun} id", ctx=ctx) from None

