"""`vidarc thaw OUT [VIDEO…]` and `python -m jobs.thaw ...`: readable copies of archive objects in
GLACIER or DEEP_ARCHIVE, and where they stand (`--status`).

A thaw is an S3 restore request per object (`pipeline/store/thaw.py`): a temporary copy readable for
`--days` days, ready after hours (the tier: Expedited, Standard or Bulk; DEEP_ARCHIVE has no
Expedited). The read commands (restore, export, verify) then read the objects, or with `--wait` wait
for copies that are on their way.

Exit codes: 0 every request was accepted (or, with --status, the report was made), 2 bad options, a
video not in the archive, a filter that selects nothing, or an unreachable store (one line; no request
sent).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

COMMAND_HELP = "Ask S3 for readable copies of archive objects in GLACIER or DEEP_ARCHIVE (or --status)."
#: Objects not ready yet that the text report names (every one is in --json).
LISTED = 20


def thaw_command(
    out: Annotated[str, typer.Argument(help="Archive root: s3:// URL (a local folder has nothing to thaw).")],
    videos: Annotated[
        list[str] | None,
        typer.Argument(help="video_keys or source names (default: every video, or --where)."),
    ] = None,
    where: Annotated[
        str | None, typer.Option("--where", help="filter on the manifest, e.g. \"codec == 'glvc'\"")
    ] = None,
    days: Annotated[int, typer.Option(help="Days the readable copy is kept.")] = 7,
    tier: Annotated[
        str, typer.Option(help="Expedited | Standard | Bulk: how fast (and how dear) the copy is made.")
    ] = "Standard",
    status: Annotated[
        bool, typer.Option("--status", help="Ask nothing: say which objects are frozen, thawing or ready.")
    ] = False,
    endpoint_url: Annotated[str | None, typer.Option(help="S3-compatible endpoint URL.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Ask S3 for readable copies of archive objects in GLACIER or DEEP_ARCHIVE (or --status)."""
    from pipeline.format.runinfo import json_text
    from pipeline.read.thaw_plan import ThawSelectionError, select_objects
    from pipeline.store import thaw
    from pipeline.store.storage import StorageError, filesystem, redact
    from pipeline.store.storage_class import StorageClassError, check_tier
    from pipeline.text import printable

    def fail(message: str) -> None:
        print(f"error: {printable(redact(message))}", file=sys.stderr)
        raise typer.Exit(2)

    if not status and days < 1:
        fail(f"--days must be at least 1, got {days}")
    try:
        tier = check_tier(tier)
        selected = select_objects(out, videos or (), where=where, endpoint_url=endpoint_url)
        if not status and tier == "Expedited":
            deep = [o.uri for o in selected if o.storage_class == "DEEP_ARCHIVE"]
            if deep:
                check_tier(tier, "DEEP_ARCHIVE")
        fs, _ = filesystem(out, endpoint_url=endpoint_url)
        paths = [o.path for o in selected]
        if status:
            states = thaw.object_states(fs, paths)
        else:
            print(
                f"asking for readable copies of {len(paths)} objects ({tier} tier, {days} days)",
                file=sys.stderr,
                flush=True,
            )
            states = thaw.request_thaws(fs, paths, days=days, tier=tier)
    except (ThawSelectionError, StorageClassError, StorageError) as exc:
        fail(str(exc).splitlines()[0])
        return
    by_path = {o.path: o for o in selected}
    summary = thaw.summarise(states)
    not_ready = sorted((by_path[p].uri, s) for p, s in states.items() if not s.readable)
    if as_json:
        report = {
            **summary,
            "action": "status" if status else "thaw",
            "tier": None if status else tier,
            "days": None if status else days,
            "objects_detail": [
                {
                    "uri": by_path[p].uri,
                    "state": s.state,
                    "storage_class": s.storage_class,
                    "expires": s.expires,
                    "video_keys": list(by_path[p].video_keys),
                }
                for p, s in sorted(states.items())
            ],
        }
        sys.stdout.write(json_text(report, indent=2, sort_keys=True) + "\n")
        raise typer.Exit(0)
    counts = ", ".join(f"{n} {state}" for state, n in sorted(summary["by_state"].items()))
    verb = "status of" if status else "thaw asked for"
    print(f"{verb} {summary['objects']} objects: {counts}")
    if summary["first_expiry"]:
        print(f"  the first readable copy expires {summary['first_expiry']}")
    for uri, state in not_ready[:LISTED]:
        print(f"  {state.state}: {printable(uri)}")
    if len(not_ready) > LISTED:
        print(f"  ... and {len(not_ready) - LISTED} more (--json lists every object)")
    if summary["by_state"].get("missing"):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("thaw", help=COMMAND_HELP)(thaw_command)


def main() -> None:
    from jobs.help_defaults import describe_defaults

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command(help=COMMAND_HELP)(thaw_command)
    describe_defaults(app)
    app()


if __name__ == "__main__":
    main()
