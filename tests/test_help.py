"""`--help` of every command states every option's default, the ones that are off until given
("none", "off") included: a reader cannot tell "off" from "undocumented" otherwise."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from jobs.cli import app


def _commands(command: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every command under `command` (typer's own click), with its path of names."""
    found = [(path, command)]
    for name, sub in getattr(command, "commands", {}).items():
        found += _commands(sub, (*path, name))
    return found


COMMANDS = dict(_commands(typer.main.get_command(app)))
COMMANDS.pop(())


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_help_shows_every_options_default(path: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")
    params = COMMANDS[path].params
    options = [p for p in params if p.param_type_name == "option" and p.name != "help" and not p.required]
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert result.output.count("[default:") >= len(options), result.output


def test_verify_fraction_says_what_its_default_means(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")
    result = CliRunner().invoke(app, ["archive", "--help"])
    assert "[default: (none: no closing verify)]" in result.output
