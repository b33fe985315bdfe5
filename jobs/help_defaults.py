"""`--help` states every option's default, also the ones typer leaves out.

Typer shows `[default: 2]` for an option with a value, but nothing for one whose default is None (a
feature that is off until given: `--verify-fraction`, `--limit`, `--endpoint-url`...) or for a flag
that is off: a reader cannot tell "off" from "undocumented". `describe_defaults(app)` gives those
options a `show_default` text, "none" or "off", once, before typer builds the click commands.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Annotated, Any

import typer
from typer.models import OptionInfo, ParameterInfo


def describe_defaults(app: typer.Typer) -> typer.Typer:
    """Give every option of `app`'s commands (sub-apps included) whose default is None or a False flag
    a `show_default` text; options that already show their value, or chose not to, are left alone."""
    for command in app.registered_commands:
        if command.callback is not None:
            _describe(command.callback)
    if app.registered_callback is not None and app.registered_callback.callback is not None:
        _describe(app.registered_callback.callback)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            describe_defaults(group.typer_instance)
    return app


def _describe(function: Callable[..., Any]) -> None:
    """Mark `function`'s None / False options. Its string annotations (`from __future__ import
    annotations`) are evaluated once here and stored back, so typer reads these very `OptionInfo`s."""
    hints = typing.get_type_hints(function, include_extras=True)
    function.__annotations__ = dict(hints)
    defaults = getattr(function, "__defaults__", None) or ()
    names = function.__code__.co_varnames[: function.__code__.co_argcount]
    kw_defaults = getattr(function, "__kwdefaults__", None) or {}
    values = {**dict(zip(names[len(names) - len(defaults) :], defaults, strict=True)), **kw_defaults}
    for name, hint in hints.items():
        if name not in values or values[name] not in (None, False):
            continue
        text = "none" if values[name] is None else "off"
        metadata = getattr(hint, "__metadata__", ())
        info = next((m for m in metadata if isinstance(m, OptionInfo)), None)
        if info is None and not any(isinstance(m, ParameterInfo) for m in metadata):
            # a plain `x: str | None = None`, which typer makes an option with nothing to show
            function.__annotations__[name] = Annotated[hint, typer.Option(show_default=text)]
        elif info is not None and info.show_default is True:
            info.show_default = text
