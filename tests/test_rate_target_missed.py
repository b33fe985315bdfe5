"""A bitrate target a codec cannot reach is said, not buried: `target_reached` per manifest row, the
count in summary.json and on stderr, per video in `ls`, and the audit's rate-target table (x264 on
real files, real Ray)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from codec.base import RateTarget
from pipeline.archive import run_archive
from pipeline.archive.config import ArchiveConfig
from pipeline.audit.summary import audit_archive
from pipeline.audit.videos import list_archive


def _rows(out: Path) -> list[dict]:
    rows = []
    for path in sorted((out / "manifest").glob("*.parquet")):
        rows.extend(
            pq.read_table(path, columns=["video_key", "gop_index", "target_reached", "bpp"]).to_pylist()
        )
    return rows


def _archive(samples: Path, out: Path, fast_metrics: tuple[str, ...], target: RateTarget | None):
    config = ArchiveConfig(
        src=str(samples), out=str(out), codec="x264", skip_metrics=fast_metrics, gop_frames=16, target=target
    )
    return run_archive(config)


def test_a_missed_bitrate_target_shows_in_rows_summary_and_audit(
    samples: Path, tmp_path: Path, ray_address: str, fast_metrics: tuple[str, ...]
) -> None:
    out = tmp_path / "missed"
    result = _archive(samples, out, fast_metrics, RateTarget("bpp", 0.0001))  # under x264's CRF 51
    assert result.exit_code == 0  # a missed rate is reported, not a failure
    rows = _rows(out)
    assert rows and all(r["target_reached"] is False for r in rows)
    assert all(r["bpp"] > 0.0001 for r in rows)
    summary = result.summary
    assert summary["rate_target_missed_gops"] == len(rows) == summary["gops"]
    listed = [(m["video_key"], m["gop_index"]) for m in summary["rate_target_missed"]]
    assert listed == sorted((r["video_key"], r["gop_index"]) for r in rows)
    listed = list_archive(str(out))
    assert sum(v.rate_target_missed for v in listed) == len(rows) and all(
        v.rate_target_missed for v in listed
    )
    (group,) = audit_archive(str(out)).groups
    assert group["rate_check"] == {
        "target": "bpp 0.0001", "gops_missed": len(rows), "gops_unknown": 0, "of_gops": len(rows)
    }  # fmt: skip


def test_a_reached_bitrate_target_and_a_quality_target(
    samples: Path, tmp_path: Path, ray_address: str, fast_metrics: tuple[str, ...]
) -> None:
    reached = _archive(samples, tmp_path / "reached", fast_metrics, RateTarget("bpp", 0.5))
    rows = _rows(tmp_path / "reached")
    assert rows and all(r["target_reached"] is True for r in rows)
    assert reached.summary["rate_target_missed_gops"] == 0 and reached.summary["rate_target_missed"] == []
    (group,) = audit_archive(str(tmp_path / "reached")).groups
    assert group["rate_check"]["gops_missed"] == 0
    assert [v.rate_target_missed for v in list_archive(str(tmp_path / "reached"))] == [0] * len(
        {r["video_key"] for r in rows}
    )
    quality = _archive(samples, tmp_path / "quality", fast_metrics, None)  # the default CRF: nothing to reach
    assert all(r["target_reached"] is None for r in _rows(tmp_path / "quality"))
    assert quality.summary["rate_target_missed_gops"] == 0
    (group,) = audit_archive(str(tmp_path / "quality")).groups
    assert group["rate_check"] is None
