"""Costs in S3 storage classes: the same archive priced in DEEP_ARCHIVE and STANDARD, per-object
minimums and overheads, packs counted once, mixed classes, overrides from a prices file, and the
one-line errors of `--storage-class FOO` and a negative class price (hand-built manifests, no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
import pytest
from test_audit import gop_row, write_part
from test_costs import _reference_row
from typer.testing import CliRunner

from jobs.audit import app as audit_app
from jobs.inspect_archive import register
from pipeline.audit.costs import cost_report
from pipeline.audit.prices import PricesError, load_prices
from pipeline.format.schema import REFERENCE_SCHEMA

GB = 2**30
KB = 1024
# The published figures the defaults claim (AWS S3 pricing page, us-east-1), restated here so the test
# fails if the code's table drifts from the documentation.
STANDARD_GB_MONTH, DEEP_GB_MONTH, IA_GB_MONTH = 0.023, 0.00099, 0.0125


def _archive(tmp_path: Path, videos: dict[int, dict], *, reference: bool = False) -> str:
    """One GOP per video of a neural codec (0.1 GPU-hour of encoding), `videos[i]` its row values."""
    fs = fsspec.filesystem("file")
    (tmp_path / "manifest").mkdir(parents=True, exist_ok=True)
    for video, values in videos.items():
        row = gop_row(video, 0, codec="glvc", compute_device="NVIDIA L4", encode_device_seconds=360.0)
        row.update(values)
        write_part(fs, str(tmp_path / f"manifest/part-{video}.parquet"), [row])
    if reference:
        (tmp_path / "reference").mkdir(exist_ok=True)
        rows = [_reference_row(v, 0, encode_cpu_seconds=1.0) for v in videos]
        write_part(fs, str(tmp_path / "reference/part-0.parquet"), rows, REFERENCE_SCHEMA)
    return str(tmp_path)


def test_deep_archive_against_standard_same_archive(tmp_path: Path) -> None:
    """Big objects: storage per month falls by the ratio of the rates, plus the 40 KB overhead per
    object; the break-even in the archive's class grows by the inverse ratio."""
    size = 5 * GB
    out = _archive(
        tmp_path,
        {v: {"archive_bytes": size, "payload_bytes": size, "source_bytes": 4 * size} for v in range(2)},
        reference=True,
    )
    standard = cost_report(out, load_prices())["total"]
    deep = cost_report(out, load_prices(storage_class="deep_archive"))["total"]
    s, d = standard["storage"], deep["storage"]
    assert list(s["classes"]) == ["STANDARD"] and list(d["classes"]) == ["DEEP_ARCHIVE"]
    assert s["total"]["per_month"] == pytest.approx(2 * size / GB * STANDARD_GB_MONTH)
    overhead = 2 * (32 * KB / GB * DEEP_GB_MONTH + 8 * KB / GB * STANDARD_GB_MONTH)
    assert d["total"]["per_month"] == pytest.approx(2 * size / GB * DEEP_GB_MONTH + overhead)
    assert d["total"]["per_month"] / s["total"]["per_month"] == pytest.approx(
        DEEP_GB_MONTH / STANDARD_GB_MONTH, rel=1e-4
    )
    # 180 days' minimum: six months of storage owed even if the objects are deleted at once.
    assert d["total"]["minimum_commitment"] == pytest.approx(6 * d["total"]["per_month"])
    assert s["total"]["minimum_commitment"] == 0
    # Writing costs more per PUT; reading back needs a restore request and retrieval per GB.
    assert d["total"]["write"] > s["total"]["write"] > 0
    read = d["classes"]["DEEP_ARCHIVE"]["read_back"]
    assert read["bulk"]["total"] < read["standard"]["total"]
    assert read["standard"]["retrieval"] == pytest.approx(2 * size / GB * 0.02)
    assert s["classes"]["STANDARD"]["read_back"]["standard"]["retrieval"] == 0
    # The break-even against the source and against the classic reference: longer in DEEP_ARCHIVE.
    ratio = STANDARD_GB_MONTH / DEEP_GB_MONTH
    assert deep["vs_source"]["storage_class"] == "DEEP_ARCHIVE"
    assert deep["vs_source"]["months_in_class"] == pytest.approx(
        standard["vs_source"]["months_in_class"] * ratio
    )
    (ref_s,), (ref_d,) = standard["references"], deep["references"]
    assert ref_d["vs_reference"]["months_in_class"] == pytest.approx(
        ref_s["vs_reference"]["months_in_class"] * ratio
    )
    assert ref_d["vs_reference"]["months_in_class"] > ref_s["vs_reference"]["months_in_class"]
    # The what-if rows do not move with the class; downloads save the retrieval fee too.
    assert deep["vs_source"]["months"] == pytest.approx(standard["vs_source"]["months"])
    assert deep["vs_source"]["downloads"] < standard["vs_source"]["downloads"]


def test_minimum_object_size_and_overhead_raise_the_bill_of_tiny_objects(tmp_path: Path) -> None:
    out = _archive(tmp_path, {v: {"archive_bytes": 1000, "payload_bytes": 900} for v in range(3)})
    ia = cost_report(out, load_prices(storage_class="STANDARD_IA"))["total"]["storage"]
    standard = cost_report(out, load_prices())["total"]["storage"]
    deep = cost_report(out, load_prices(storage_class="DEEP_ARCHIVE"))["total"]["storage"]
    assert standard["classes"]["STANDARD"]["billed_bytes"] == 3000
    assert ia["classes"]["STANDARD_IA"]["billed_bytes"] == 3 * 128 * KB  # billed as 128 KB each
    assert ia["total"]["per_month"] == pytest.approx(3 * 128 * KB / GB * IA_GB_MONTH)
    # A cheaper rate, a dearer bill: tiny objects cost more in IA and in DEEP_ARCHIVE than in STANDARD.
    assert ia["total"]["per_month"] > standard["total"]["per_month"]
    assert deep["total"]["per_month"] > standard["total"]["per_month"]
    assert deep["classes"]["DEEP_ARCHIVE"]["billed_standard_bytes"] == 3 * 8 * KB


def test_a_pack_counts_once_and_mixed_classes_are_priced_per_row(tmp_path: Path) -> None:
    pack = "out/packs/p1.vdrc"
    videos = {
        0: {"archive_uri": pack, "archive_bytes": 10_000, "storage_class": "GLACIER_IR", "member_offset": 0},
        1: {"archive_uri": pack, "archive_bytes": 20_000, "storage_class": "GLACIER_IR", "member_offset": 1},
        2: {"archive_bytes": 3 * GB, "storage_class": "DEEP_ARCHIVE"},
        3: {"archive_bytes": GB},  # null class (a local folder, an older archive): STANDARD
    }
    out = _archive(tmp_path, videos)
    storage = cost_report(out, load_prices())["total"]["storage"]
    classes = storage["classes"]
    assert set(classes) == {"GLACIER_IR", "DEEP_ARCHIVE", "STANDARD"}
    ir = classes["GLACIER_IR"]
    assert ir["objects"] == 1 and ir["stored_bytes"] == 30_000
    assert ir["billed_bytes"] == 128 * KB  # the pack's minimum, once
    assert ir["write"] == pytest.approx(0.02 / 1000)  # one PUT
    assert classes["DEEP_ARCHIVE"]["objects"] == 1 and classes["STANDARD"]["objects"] == 1
    assert storage["total"]["objects"] == 3
    stored = 30_000 + 3 * GB + GB
    expected = (30_000 * 0.004 + 3 * GB * DEEP_GB_MONTH + GB * STANDARD_GB_MONTH) / stored
    assert storage["gb_month_rate"] == pytest.approx(expected)
    # --storage-class overrides every row's class.
    assumed = cost_report(out, load_prices(storage_class="STANDARD"))["total"]["storage"]
    assert list(assumed["classes"]) == ["STANDARD"] and assumed["total"]["objects"] == 3


def test_class_overrides_from_a_prices_file(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text("[storage_class.deep_archive]\ngb_month = 0.002\nmin_storage_days = 365\n")
    prices = load_prices(path, storage_class="DEEP_ARCHIVE")
    deep = prices.storage_classes["DEEP_ARCHIVE"]
    assert (deep["gb_month"], deep.sources["gb_month"]) == (0.002, str(path))
    assert deep.sources["put_per_1000"].startswith("default") and "AWS" in deep.sources["put_per_1000"]
    out = _archive(tmp_path / "a", {0: {"archive_bytes": GB, "payload_bytes": GB, "source_bytes": 2 * GB}})
    total = cost_report(out, prices)["total"]
    c = total["storage"]["classes"]["DEEP_ARCHIVE"]
    assert c["per_month"] == pytest.approx((GB + 32 * KB) / GB * 0.002 + 8 * KB / GB * STANDARD_GB_MONTH)
    assert c["minimum_commitment"] == pytest.approx(c["per_month"] * 365 / 30)
    assert total["vs_source"]["class_gb_month"] == 0.002


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[storage_class.DEEP_ARCHIVE]\ngb_month = -0.001\n", "cannot be negative"),
        ("[storage_class.TAPE]\ngb_month = 0.001\n", "unknown storage class 'TAPE'"),
        ("[storage_class.GLACIER]\ngb_mnth = 0.001\n", "unknown field(s) gb_mnth"),
        ("storage_class = 3\n", "must hold tables"),
    ],
)
def test_bad_class_prices_are_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(PricesError) as error:
        load_prices(path)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_cli_audit_and_ls_price_a_class_and_refuse_bad_input(tmp_path: Path) -> None:
    out = _archive(tmp_path / "arc", {v: {"archive_bytes": 40_000, "storage_class": None} for v in range(2)})
    runner = CliRunner()
    result = runner.invoke(audit_app, ["audit", out, "--json", "--storage-class", "DEEP_ARCHIVE"])
    assert result.exit_code == 0, result.output
    costs = json.loads(result.stdout)["costs"]
    storage = costs["total"]["storage"]
    assert storage["class_from"] == "--storage-class" and "per_month" in storage["units"]
    assert costs["prices"]["assumed_storage_class"] == "DEEP_ARCHIVE"
    assert costs["prices"]["storage_classes"]["DEEP_ARCHIVE"]["gb_month"]["unit"] == "per GB-month"
    assert costs["total"]["vs_source"]["storage_class"] == "DEEP_ARCHIVE"
    text = runner.invoke(audit_app, ["audit", out, "--worst", "0"], env={"COLUMNS": "250"})
    assert text.exit_code == 0 and "storage in STANDARD (its class)" in text.stdout
    assert "minimum commitment" in text.stdout and "AWS S3 pricing page" in text.stdout

    bad_class = runner.invoke(audit_app, ["audit", out, "--storage-class", "FOO"])
    negative = tmp_path / "neg.toml"
    negative.write_text("[storage_class.STANDARD]\nput_per_1000 = -1\n")
    bad_price = runner.invoke(audit_app, ["audit", out, "--prices", str(negative)])
    import typer

    ls_app = typer.Typer()
    register(ls_app)
    bad_ls = runner.invoke(ls_app, ["ls", out, "--storage-class", "FOO"])
    for bad in (bad_class, bad_price, bad_ls):
        lines = bad.output.strip().splitlines()
        assert bad.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), bad.output

    listed = runner.invoke(ls_app, ["ls", out, "--json", "--storage-class", "glacier_ir"])
    assert listed.exit_code == 0, listed.output
    (first, second) = json.loads(listed.stdout)
    for video in (first, second):
        ir = video["costs"]["storage"]["classes"]["GLACIER_IR"]
        assert ir["objects"] == 1 and ir["billed_bytes"] == 128 * KB  # 40 KB billed as 128 KB
    text = runner.invoke(ls_app, ["ls", out, "--storage-class", "GLACIER"], env={"COLUMNS": "250"})
    assert text.exit_code == 0 and "GLACIER" in text.stdout and "write / read back" in text.stdout


def test_ls_charges_a_packed_video_its_share_of_the_pack(tmp_path: Path) -> None:
    pack = "file://" + str(tmp_path / "packs/p1.vdrc")
    videos = {
        v: {"archive_uri": pack, "archive_bytes": 1000 * (v + 1), "storage_class": "GLACIER_IR"}
        for v in range(2)
    }
    out = _archive(tmp_path, videos)
    (tmp_path / "markers/packs").mkdir(parents=True)
    marker = {"pack_id": "p1", "archive_uri": pack, "archive_bytes": 3000, "members": ["key0", "key1"]}
    (tmp_path / "markers/packs/p1.json").write_text(json.dumps(marker))
    import typer

    ls_app = typer.Typer()
    register(ls_app)
    listed = CliRunner().invoke(ls_app, ["ls", out, "--json"])
    assert listed.exit_code == 0, listed.output
    shares = [v["costs"]["storage"]["classes"]["GLACIER_IR"] for v in json.loads(listed.stdout)]
    assert [s["objects"] for s in shares] == pytest.approx([1 / 3, 2 / 3])
    # The pack's 128 KB minimum, split by bytes: the members' bills add up to the pack's.
    assert sum(s["billed_bytes"] for s in shares) == pytest.approx(128 * KB)
    assert sum(s["write"] for s in shares) == pytest.approx(0.02 / 1000)
