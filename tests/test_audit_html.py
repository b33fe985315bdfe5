"""`vidarc audit --html`: a self-contained page whose figures and frames really render in a browser."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import fsspec
import pytest
from test_audit import gop_row, verify_row, write_part
from typer.testing import CliRunner

from jobs.audit import app
from pipeline.format.schema import VERIFY_SCHEMA

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# Appended to a copy of the report only for the test: reports themselves carry no scripts.
PROBE = """<script>
window.addEventListener('load', () => {
  const sizes = [...document.images].map(i => `${i.alt}:${i.complete ? i.naturalWidth : -1}x${i.naturalHeight}`);
  document.body.setAttribute('data-images', sizes.join(','));
});
</script>"""


def browser_image_sizes(page: Path, tmp_path: Path) -> list[tuple[str, int, int]]:
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        probe.as_uri(),
    ]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
    match = re.search(r'data-images="([^"]*)"', dom)
    assert match, "the probe script did not run"
    sizes = []
    for item in filter(None, match.group(1).split(",")):
        alt, size = item.rsplit(":", 1)
        width, height = size.split("x")
        sizes.append((alt, int(width), int(height)))
    return sizes


def write_x264_archive(path: Path, frames) -> None:
    """A real .vdrc object: two x264 GOPs of 10 frames and the container index."""
    from codec.base import RateTarget
    from codec.registry import create_codec
    from pipeline.format.container import write_container
    from pipeline.format.container_header import ContainerHeader

    codec = create_codec("x264")
    payloads = [codec.encode(frames[i : i + 10], RateTarget("quality", 18), 25).payload for i in (0, 10)]
    header = ContainerHeader(codec="x264", width=64, height=48, frame_count=20, fps_num=25, fps_den=1)
    with path.open("wb") as stream:
        write_container(stream, header, [(0, 10, payloads[0]), (10, 10, payloads[1])])


@pytest.fixture
def archive_with_sources(tmp_path, clip):
    """Two real sources; video 0 has a real x264 archive object, video 1's object is missing."""
    pytest.importorskip("codec.classic", reason="the classic codecs are not in this checkout yet")
    from pipeline.sources.synthetic import write_video

    sources = [write_video(tmp_path / f"video{v}.mp4", clip[:20], fps=25) for v in range(2)]
    out = tmp_path / "out"
    (out / "manifest").mkdir(parents=True)
    (out / "verify").mkdir()
    (out / "videos").mkdir()
    write_x264_archive(out / "videos" / "key0.vdrc", clip[:20])
    rows = [
        gop_row(
            v,
            g,
            psnr=30.0 + 2 * v + g,
            vmaf=80.0 + g,
            source_uri=str(sources[v]),
            archive_uri=str(out / "videos" / f"key{v}.vdrc"),
        )
        for v in range(2)
        for g in range(2)
    ]
    fs = fsspec.filesystem("file")
    write_part(fs, str(out / "manifest/part-0.parquet"), rows)
    write_part(
        fs, str(out / "verify/part-v.parquet"), [verify_row(0, 0), verify_row(1, 1, ok=False)], VERIFY_SCHEMA
    )
    return out, sources


def test_html_report_is_self_contained_and_its_images_decode(archive_with_sources, tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed: cannot check that the report renders")
    out, sources = archive_with_sources
    sources[1].unlink()  # a gone source must give a note, not a failed report
    report = tmp_path / "report" / "audit.html"
    result = CliRunner().invoke(app, ["audit", str(out), "--html", str(report)])
    assert result.exit_code == 0, result.output
    page = report.read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "source frame unavailable" in page and "decoded frame unavailable" in page
    assert "crc 1" in page  # verify results are shown
    sizes = browser_image_sizes(report, tmp_path)
    figures = [s for s in sizes if s[0] == "figure"]
    frames = [s for s in sizes if s[0] in ("source frame", "decoded frame")]
    assert len(figures) == 3  # rate–quality, histograms, per-GOP series
    assert all(width > 200 and height > 100 for _, width, height in figures)
    # Video 0's two GOPs: source and archive both decode, side by side, at the true frame size.
    assert sorted(name for name, _, _ in frames) == ["decoded frame"] * 2 + ["source frame"] * 2
    assert all((w, h) == (64, 48) for _, w, h in frames)
    assert not (report.parent / "audit.html.partial").exists()


def test_worst_gop_frames_come_from_the_right_gop_of_the_archive(archive_with_sources, clip):
    from pipeline.audit.report_html import decode_archived_frame
    from pipeline.metrics import psnr_rgb

    out, _ = archive_with_sources
    row = {"archive_uri": str(out / "videos" / "key0.vdrc"), "gop_index": 1}
    frame = decode_archived_frame(row, 5, None)
    assert psnr_rgb(clip[15:16], frame[None]) > 25  # GOP 1 starts at frame 10
    assert psnr_rgb(clip[15:16], frame[None]) > psnr_rgb(clip[5:6], frame[None]) + 3
