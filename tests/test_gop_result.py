"""`GopResult`: what the encode actor returns for a GOP, carried into that GOP's manifest row unchanged."""

from __future__ import annotations

import dataclasses
import pickle

from pipeline.archive.gop_result import GopResult
from pipeline.archive.plan import GopSpan
from pipeline.archive.video_writer import VideoJob, video_rows
from pipeline.format.container import GopEntry
from pipeline.format.container_header import ContainerHeader
from pipeline.format.schema import MANIFEST_SCHEMA, rows_to_table

COMPUTE = {"device": "cpu", "decode": 0.1, "encode": 0.2, "metrics": 0.3, "search": None}
MEASURED = GopResult(
    payload_bytes=100, bpp=0.5, kbps=12.0, encode_seconds=0.25, device="cpu",
    params={"crf": 23, "target_reached": True}, recon_sha256="r" * 64, exact_sha256="e" * 64,
    fingerprint=b"fp", metrics={"psnr": 40.0, "psnr_y": 41.0, "vmaf": None}, metrics_note="a note",
    compute=COMPUTE,
)  # fmt: skip
UNMEASURED = GopResult(
    payload_bytes=90, bpp=0.4, kbps=11.0, encode_seconds=0.2, device="cpu", params={"crf": 23},
    exact_sha256="f" * 64, metrics_note="not measured", compute=COMPUTE, source_psnr=33.5,
)  # fmt: skip


def _rows(results: list[GopResult]) -> list[dict]:
    header = ContainerHeader(
        frame_count=8, width=64, height=48, fps_num=24, fps_den=1, codec="x264", codec_version="v",
        target={"kind": "kbps", "value": 100.0}, source_note="cut", extra={"quality_floor": {"metric": "psnr", "value": 20.0}},
    )  # fmt: skip
    job = VideoJob(
        video_key="k", source_uri="s.mp4", source_bytes=5, out="/tmp/unused", run_id="r", endpoint_url=None,
        header=header, spans=(GopSpan(0, 0, 4, None), GopSpan(1, 4, 4, None)), has_audio=False,
        compute={"probe": 1.0},
    )  # fmt: skip
    entries = [GopEntry(0, 0, 4, 8, 100, 7), GopEntry(1, 4, 4, 108, 90, 9)]
    return video_rows(job, results, entries, "file:///a.vdrc", 0.5, archive_bytes=300)


def test_a_gop_result_crosses_ray_as_it_is() -> None:
    assert pickle.loads(pickle.dumps(MEASURED)) == MEASURED
    failed = GopResult.failed("clip GOP 3: refused")
    assert failed.error == "clip GOP 3: refused" and failed.payload_bytes == 0


def test_a_gop_result_carries_into_its_manifest_row() -> None:
    measured, unmeasured = _rows([MEASURED, UNMEASURED])
    assert {k: measured[k] for k in ("payload_bytes", "bpp", "kbps", "encode_seconds", "device")} == {
        "payload_bytes": 100, "bpp": 0.5, "kbps": 12.0, "encode_seconds": 0.25, "device": "cpu",
    }  # fmt: skip
    assert (
        measured["codec_params"] == '{"crf": 23, "target_reached": true}'
        and measured["target_reached"] is True
    )
    assert (measured["recon_sha256"], measured["exact_sha256"], measured["fingerprint"]) == (
        "r" * 64,
        "e" * 64,
        b"fp",
    )
    assert (measured["psnr"], measured["psnr_y"], measured["vmaf"]) == (40.0, 41.0, None)
    assert (measured["metrics_note"], measured["source_psnr"]) == ("a note", None)
    assert (measured["compute_device"], measured["encode_device_seconds"]) == ("cpu", 0.2)
    assert measured["probe_device_seconds"] == 0.5 and measured["floor_value"] == 20.0
    assert measured["source_note"] == "cut" and measured["offset"] == 8 and measured["archive_bytes"] == 300
    assert (
        unmeasured.get("psnr") is None
        and unmeasured["recon_sha256"] is None
        and unmeasured["fingerprint"] is None
    )
    assert (unmeasured["metrics_note"], unmeasured["source_psnr"]) == ("not measured", 33.5)
    assert unmeasured["target_reached"] is None  # the codec gave no verdict
    table = rows_to_table([measured, unmeasured], MANIFEST_SCHEMA)  # every key is a manifest column
    assert table.column("psnr").to_pylist() == [40.0, None]


def test_a_source_check_amends_a_copy() -> None:
    amended = dataclasses.replace(UNMEASURED, source_psnr=30.0)
    assert UNMEASURED.source_psnr == 33.5 and amended.quality_columns()["source_psnr"] == 30.0
