"""The `vidarc` command line: one typer app; each subcommand lives in its own jobs module.

Every jobs module exposes `register(app)` (adds its commands) and `main()` (so `python -m jobs.<name>`
works under `ray job submit`). Errors a user can act on are printed as one line, with exit code 2;
nothing here prints a traceback for bad input.
"""

from __future__ import annotations

import typer

from jobs import (
    archive,
    audit,
    bench,
    compact,
    export,
    inspect_archive,
    migrate,
    model,
    restore,
    thaw,
    train,
    verify,
)
from jobs.help_defaults import describe_defaults

app = typer.Typer(
    name="vidarc",
    help="Archive video collections with generative neural codecs on Ray.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

for module in (
    archive,
    migrate,
    verify,
    restore,
    thaw,
    export,
    inspect_archive,
    audit,
    compact,
    bench,
    train,
    model,
):
    module.register(app)
describe_defaults(app)  # every option's default in --help, "none"/"off" included


if __name__ == "__main__":
    app()
