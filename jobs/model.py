"""`vidarc model pin|info`: make a stock model directory (e.g. an official Wan2.1 download) a pinned
vidarc model, and show what vidarc sees in one.

`pin DIR` hashes every model file (bookkeeping of `hf download` and the hub cache is left out) and
writes `DIR/model_card.json`; loading works without it too, with the identity computed from the
files, but a card makes a changed or swapped file a load error rather than a new identity.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

model_app = typer.Typer(help="Pin and inspect model directories.", no_args_is_help=True)

Directory = Annotated[str, typer.Argument(help="Model directory (local folder, hub cache snapshot, or URL).")]


@model_app.command("pin")
def pin_command(
    directory: Annotated[str, typer.Argument(help="Local model directory to pin.")],
    name: Annotated[
        str | None, typer.Option(help="Model name (default: the hub repo id or folder name).")
    ] = None,
    version: Annotated[
        str | None, typer.Option(help="Model version (default: the hub revision, or 1).")
    ] = None,
) -> None:
    """Write DIR/model_card.json with the sha256 of every model file."""
    from codec.errors import CodecError
    from codec.modeldir import pin_model_dir

    try:
        model = pin_model_dir(directory, name=name, version=version)
    except CodecError as exc:
        _fail(str(exc))
    print(
        f"pinned {model.model_id}: {len(model.card['files'])} files, sha256 {model.sha256} -> {model.path}/model_card.json"
    )


@model_app.command("info")
def info_command(
    directory: Directory,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Components, GVC modes, identity, parameters, dtypes and expected memory of a model directory."""
    from codec.errors import CodecError
    from codec.modeldir import load_model_dir
    from codec.wan import model_summary

    try:
        summary = model_summary(load_model_dir(directory))
    except CodecError as exc:
        _fail(str(exc))
    if as_json:
        from pipeline.format.runinfo import json_text

        print(json_text(summary, indent=2))
        return
    print(
        f"model     {summary['model_id']}{'' if summary['pinned'] else '  (unpinned: identity computed from its files)'}"
    )
    print(f"path      {summary['path']}")
    print(f"sha256    {summary['sha256']}")
    print("components:")
    for c in summary["components"]:
        size = (
            f"{_count(c['parameters'])} params, {c['stored_dtype']}, {_size(c['bytes'])}"
            if c["parameters"]
            else "config only"
        )
        print(f"  {c['name'] + '/':<18}{c['class']:<28}{c['files']:>3} files  {size}")
    for codec in ("gvc", "glvc"):
        info = summary[codec]
        if not info["usable"]:
            print(f"{codec:<9} not usable: {info['why']}")
            continue
        memory = ", ".join(f"{k} {v} GiB" for k, v in info["memory_gib"].items())
        modes = (
            f"modes {' | '.join(info['modes'])} (default {info['default_mode']}), flow_shift {info['flow_shift']}; "
            if codec == "gvc"
            else ""
        )
        print(f"{codec:<9} {modes}identity {info['identity'][:16]}… over {', '.join(info['components'])}")
        print(f"{'':<9} memory: {memory}")


def _count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    app.add_typer(model_app, name="model")


def main() -> None:
    from jobs.help_defaults import describe_defaults

    describe_defaults(model_app)
    model_app()


if __name__ == "__main__":
    main()
