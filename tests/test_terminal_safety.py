"""Names are data: a real archive whose sources are named with rich markup (`[/x]`) and terminal escape
sequences (set the title, clear the screen) is archived, listed, audited, inspected, verified, compared
and restored, and every command prints those names as text: no `MarkupError`, no raw ESC or BEL byte
on stdout or stderr, the names shown escaped (`\\x1b[2J`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from jobs.cli import app
from pipeline.text import printable, text_console

MARKUP = "[/x]bad.mp4"  # a folder "[" holding "x]bad.mp4": the source URI holds "[/x]"
TITLE = "\x1b]0;title\x07.mkv"
CLEAR = "\x1b[2J.mkv"
TOO_BIG = "\x1b[2Jhuge\x1b]0;pwned\x07.mkv"  # over --max-pixels: a failed video, its name in every error


def test_printable_escapes_control_characters_and_keeps_text() -> None:
    assert printable("a\x1b[2Jb\x07c\nd\u202ee") == "a\\x1b[2Jb\\x07c\\nd\\u202ee"
    assert printable("[/x]bad.mp4 é ü") == "[/x]bad.mp4 é ü"
    console = text_console(width=200, record=True)
    console.print(f"[bold]{MARKUP}[/bold] {CLEAR} :smile:\nsecond line")
    assert console.export_text() == f"[bold]{MARKUP}[/bold] \\x1b[2J.mkv :smile:\nsecond line\n"


def _refuse(token: str) -> None:
    raise ValueError(f"not JSON: {token}")


def _clean(result, *codes: int) -> str:
    """The command's whole output, checked: expected exit, no traceback, no raw control byte."""
    output = result.stdout + result.stderr
    assert result.exit_code in codes, output
    assert "Traceback" not in output and "MarkupError" not in output, output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), output
    for byte in ("\x1b", "\x07"):
        assert byte not in output, repr(output)
    return output


def test_hostile_source_names_print_as_text_everywhere(
    tmp_path: Path,
    sample_dir: Path,
    clip: np.ndarray,
    odd_video_writer,
    ray_address: str,
    fast_metrics: tuple[str, ...],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # one line per row: names are not folded across lines
    src = tmp_path / "src"
    (src / "[").mkdir(parents=True)
    for name in (MARKUP, TITLE, CLEAR):
        shutil.copy(sample_dir / "short.mkv", src / name)
    big = np.repeat(np.repeat(clip[:4], 2, axis=1), 2, axis=2)  # 128x96: over the budget below
    odd_video_writer(src / TOO_BIG, big)
    out = tmp_path / "out"
    runner = CliRunner()
    skips = [arg for metric in fast_metrics for arg in ("--skip-metric", metric)]
    archived = runner.invoke(
        app, ["archive", str(src), str(out), "--gop-frames", "12", "--max-pixels", str(64 * 48), *skips]
    )
    output = _clean(archived, 1)  # the big one fails, the three others are archived
    assert "3 ok, 1 failed" in output and "\\x1b[2Jhuge\\x1b]0;pwned\\x07.mkv" in output

    listing = _clean(runner.invoke(app, ["ls", str(out)]), 0)
    assert "\\x1b[2J.mkv" in listing and "\\x1b]0;title\\x07.mkv" in listing and "x]bad.mp4" in listing
    audit = _clean(runner.invoke(app, ["audit", str(out), "--worst", "10"]), 0)
    assert "x]bad.mp4" in audit and "\\x1b]0;pwned\\x07" in audit
    for container in sorted((out / "videos").glob("*.vdrc")):
        report = _clean(runner.invoke(app, ["inspect", str(container)]), 0)
        assert "source_uri" in report
    _clean(runner.invoke(app, ["verify", str(out)]), 0)
    _clean(runner.invoke(app, ["compare", str(out), str(out)]), 0)
    # and every JSON written or printed is strict JSON (no NaN / Infinity tokens)
    for written in out.rglob("*.json"):
        json.loads(written.read_text(), parse_constant=_refuse)
    container = next((out / "videos").glob("*.vdrc"))
    for command in (["ls", str(out)], ["audit", str(out)], ["inspect", str(container)]):
        printed = runner.invoke(app, [*command, "--json"])
        json.loads(printed.stdout, parse_constant=_refuse)
    restored = _clean(runner.invoke(app, ["restore", str(out), CLEAR, str(tmp_path / "back.mkv")]), 0)
    assert (tmp_path / "back.mkv").exists() and "restored" in restored
    missing = _clean(runner.invoke(app, ["restore", str(out), "\x1b[2Jnone.mkv", str(tmp_path / "x.mkv")]), 2)
    assert "\\x1b[2Jnone.mkv" in missing
