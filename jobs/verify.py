"""`vidarc verify OUT` and `python -m jobs.verify OUT`: decode a seeded sample of an archive and check it.

Each sampled GOP's decode is proven against the digests recorded at encode time (exact, drift with its
PSNR, or mismatch; see pipeline/tools/verify.py) without reading the sources; `--against-source` also
re-measures quality against sources that still exist.

Output: the report on stdout (with `--json`, one JSON document instead, `VerifyReport.to_json` plus the
exit code, for scripts); progress lines ("verify: 3/12 GOPs decoded ...") and failures on stderr, so
stdout is only the report either way.

Exit codes: 0 everything checked is intact, 1 any failure (a corrupt byte, a missing object, a decode or
quality mismatch; each printed as one line naming the object and GOP), 2 bad options or unreadable OUT.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

COMMAND_HELP = "Decode a seeded sample of an archive's GOPs from the stored bytes and check them."


def verify_command(
    out: Annotated[str, typer.Argument(help="Archive root: local folder or fsspec URL.")],
    fraction: Annotated[float | None, typer.Option(help="Verify this fraction of all GOPs.")] = None,
    count: Annotated[int | None, typer.Option(help="Verify this many GOPs.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the GOP sample.")] = 0,
    device: Annotated[str, typer.Option(help="cpu | cuda | auto: where to decode.")] = "cpu",
    endpoint_url: Annotated[str | None, typer.Option(help="S3-compatible endpoint URL.")] = None,
    scan: Annotated[
        str,
        typer.Option(
            help="auto | full | index: CRC every byte, or only each container's index. checksums: fixity "
            "of every object from what the store reports (one HEAD each, no download, cold objects "
            "included), against the manifest's recorded checksum and size; nothing is decoded."
        ),
    ] = "auto",
    model: Annotated[
        str | None,
        typer.Option(
            help="Model directory or fsspec URL for neural codecs (default: the bundled model the "
            "archive's header names). Weights other than the header's sha256 are refused."
        ),
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address: decode the sample as Ray tasks there.")
    ] = None,
    against_source: Annotated[
        bool,
        typer.Option(
            "--against-source", help="Also measure PSNR against the source videos that still exist."
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON on stdout (progress stays on stderr).")
    ] = False,
    readable_only: Annotated[
        bool,
        typer.Option(
            "--readable-only",
            help="Check and sample only objects readable now: skip GLACIER/DEEP_ARCHIVE objects without a "
            "thawed copy (their fixity: --scan checksums).",
        ),
    ] = False,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for objects being thawed (`vidarc thaw`) instead of failing.")
    ] = False,
) -> None:
    """Decode a seeded sample of an archive's GOPs from the stored bytes and check them."""
    from pipeline.store.storage import redact
    from pipeline.text import printable
    from pipeline.tools.verify import VerifyError, run_verify

    if device not in ("cpu", "cuda", "auto"):
        print(f"error: --device must be cpu, cuda or auto, got {device!r}", file=sys.stderr)
        raise typer.Exit(2)
    if scan == "checksums":
        _fixity(out, endpoint_url, as_json)
    owned = False
    try:
        if address:
            import ray

            owned = not ray.is_initialized()
            if owned:
                ray.init(address=address, log_to_driver=False)
        report = run_verify(
            out, fraction=fraction, count=count, seed=seed, device=device, endpoint_url=endpoint_url,
            scan=scan, model=model, against_source=against_source, progress=_to_stderr,
            readable_only=readable_only, wait=wait,
        )  # fmt: skip
    except VerifyError as exc:
        print(f"error: {printable(redact(str(exc)))}", file=sys.stderr)
        raise typer.Exit(2) from None
    finally:
        if owned:
            import ray

            ray.shutdown()
    code = 0 if report.ok else 1
    if as_json:
        from pipeline.format.runinfo import json_text

        sys.stdout.write(json_text({**report.to_json(), "exit_code": code}, indent=2, sort_keys=True) + "\n")
    else:
        _print_report(report)
    for failure in report.failures:
        print(f"  FAILED: {printable(failure)}", file=sys.stderr)
    raise typer.Exit(code)


def _fixity(out: str, endpoint_url: str | None, as_json: bool) -> None:
    """`--scan checksums`: the fixity pass (`pipeline/read/fixity.py`); exits 0 intact, 1 failures, 2 cannot
    run."""
    from pipeline.format.runinfo import json_text
    from pipeline.read.fixity import FixityError, scan_checksums
    from pipeline.store.storage import redact
    from pipeline.text import printable

    try:
        report = scan_checksums(out, endpoint_url=endpoint_url, progress=_to_stderr)
    except FixityError as exc:
        print(f"error: {printable(redact(str(exc)))}", file=sys.stderr)
        raise typer.Exit(2) from None
    code = 0 if report.ok else 1
    if as_json:
        sys.stdout.write(json_text({**report.to_json(), "exit_code": code}, indent=2, sort_keys=True) + "\n")
    else:
        states = ", ".join(f"{n} {state}" for state, n in sorted(report.by_state.items())) or "none"
        print(
            f"fixity {report.scan_id}: {report.objects} objects checked ({states}), "
            f"{report.requests} store requests, {report.bytes_hashed} bytes read"
        )
        if report.by_state.get("unrecorded"):
            print(
                f"  note: {report.by_state['unrecorded']} objects have no checksum on record (archived before "
                "checksums were kept, or the store keeps none): only their size was compared"
            )
        if report.output_uri:
            print(f"rows written to {report.output_uri}")
    for failure in [*report.damaged_parts, *report.failures]:
        print(f"  FAILED: {printable(failure)}", file=sys.stderr)
    if report.failures_total > len(report.failures):
        print(
            f"  ... and {report.failures_total - len(report.failures)} more (see the rows)", file=sys.stderr
        )
    raise typer.Exit(code)


def _to_stderr(line: str) -> None:
    from pipeline.text import printable

    print(printable(line), file=sys.stderr, flush=True)


def _print_report(report: Any) -> None:
    """The human report on stdout (failures go to stderr, by the caller)."""
    from pipeline.text import printable

    print(
        f"verify {report.verify_run_id}: {report.gops_decoded} of {report.gops_total} GOPs decoded, "
        f"{report.containers_checked} containers checked ({report.scan} scan), "
        f"{len(report.failures)} failures"
    )
    checks = report.checks()
    if report.gops_decoded:
        print(
            f"  decode proof: {checks['exact']} exact, {checks['drift']} drift{drift_words(checks)}, "
            f"{checks['mismatch']} mismatch, {checks['unproven']} unproven (archived before digests)"
        )
        if checks["exact-part"]:
            print(
                f"  {checks['exact-part']} GOPs proven by their exact part only (archived with "
                "--fingerprint-every > 1: no pixels recorded)"
            )
    for warning in report.warnings:
        print(f"  note: {printable(warning)}")
    if report.output_uri:
        print(f"rows written to {report.output_uri}")


def drift_words(checks: dict[str, Any]) -> str:
    """How far the drifting GOPs are from the encoder's pixels, in words: the worst fingerprint PSNR,
    or, for pixels that differ while the luma fingerprint is the same (an infinite PSNR), that."""
    if not checks["drift"]:
        return ""
    worst, identical = checks["worst_drift_db"], checks["drift_fingerprint_identical"]
    if worst is None:
        return " (fingerprint identical; pixels differ)"
    more = f"; {identical} with the fingerprint identical, pixels differing" if identical else ""
    return f" (worst {worst:.1f} dB{more})"


def register(app: typer.Typer) -> None:
    app.command("verify", help=COMMAND_HELP)(verify_command)


def main() -> None:
    from jobs.help_defaults import describe_defaults

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command(help=COMMAND_HELP)(verify_command)
    describe_defaults(app)
    app()


if __name__ == "__main__":
    main()
