"""`vidarc verify OUT` and `python -m jobs.verify OUT`: decode a seeded sample of an archive and check it.

Each sampled GOP's decode is proven against the digests recorded at encode time (exact, drift with its
PSNR, or mismatch; see pipeline/verify.py) without reading the sources; `--against-source` also
re-measures quality against sources that still exist.

Exit codes: 0 everything checked is intact, 1 any failure (a corrupt byte, a missing object, a decode or
quality mismatch; each printed as one line naming the object and GOP), 2 bad options or unreadable OUT.
"""

from __future__ import annotations

import sys
from typing import Annotated

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
        str, typer.Option(help="auto | full | index: CRC every byte, or only each container's index.")
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
) -> None:
    """Decode a seeded sample of an archive's GOPs from the stored bytes and check them."""
    from pipeline.storage import redact
    from pipeline.text import printable
    from pipeline.verify import VerifyError, run_verify

    if device not in ("cpu", "cuda", "auto"):
        print(f"error: --device must be cpu, cuda or auto, got {device!r}", file=sys.stderr)
        raise typer.Exit(2)
    owned = False
    try:
        if address:
            import ray

            owned = not ray.is_initialized()
            if owned:
                ray.init(address=address, log_to_driver=False)
        report = run_verify(
            out, fraction=fraction, count=count, seed=seed, device=device, endpoint_url=endpoint_url,
            scan=scan, model=model, against_source=against_source,
        )  # fmt: skip
    except VerifyError as exc:
        print(f"error: {printable(redact(str(exc)))}", file=sys.stderr)
        raise typer.Exit(2) from None
    finally:
        if owned:
            import ray

            ray.shutdown()
    decoded = sum(1 for r in report.rows if r.get("decode_ok") is not None)
    print(
        f"verify {report.verify_run_id}: {decoded} of {report.gops_total} GOPs decoded, "
        f"{report.containers_checked} containers checked ({report.scan} scan), "
        f"{len(report.failures)} failures"
    )
    checks = report.checks()
    if decoded:
        worst = checks["worst_drift_db"]
        drift = f" (worst {worst:.1f} dB)" if worst is not None else ""
        print(
            f"  decode proof: {checks['exact']} exact, {checks['drift']} drift{drift}, "
            f"{checks['mismatch']} mismatch, {checks['unproven']} unproven (archived before digests)"
        )
        if checks["exact-part"]:
            print(
                f"  {checks['exact-part']} GOPs proven by their exact part only (archived with "
                "--fingerprint-every > 1: no pixels recorded)"
            )
    for warning in report.warnings:
        print(f"  note: {printable(warning)}")
    for failure in report.failures:
        print(f"  FAILED: {printable(failure)}", file=sys.stderr)
    if report.output_uri:
        print(f"rows written to {report.output_uri}")
    raise typer.Exit(0 if report.ok else 1)


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
