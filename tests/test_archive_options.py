"""The archive options are defined once: every command-line option of `archive` (and of `migrate`)
maps to `ArchiveConfig`, every config field is reachable or declared internal, defaults agree; and
`--config FILE.toml` sets options for a run people repeat, the command line winning, bad files refused
in one line before anything is written."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import typer.main

from codec.base import RateTarget
from jobs.archive_options import INTERNAL_FIELDS, NOT_IN_FILE, OPTION_FIELDS, archive_config, config_fields
from jobs.cli import app
from pipeline.archive.config import ArchiveConfig, ConfigError, MigrationSpec, QualityGoal

REPO = Path(__file__).resolve().parents[1]


def _params(command: str) -> dict:
    group = typer.main.get_command(app)
    return {p.name: p for p in group.commands[command].params}


def test_every_archive_option_sets_a_config_field_and_every_field_is_reachable() -> None:
    params = _params("archive")
    assert set(params) == set(OPTION_FIELDS), set(params) ^ set(OPTION_FIELDS)
    mapped = {field for fields in OPTION_FIELDS.values() for field in fields}
    assert mapped <= config_fields(), mapped - config_fields()
    assert config_fields() - mapped == INTERNAL_FIELDS


def test_the_command_line_defaults_are_the_config_defaults() -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(ArchiveConfig)}
    checked = 0
    for name, param in _params("archive").items():
        fields = OPTION_FIELDS[name]
        if len(fields) != 1 or sum(1 for f in OPTION_FIELDS.values() if f == fields) != 1:
            continue  # several options build one field (the rate target, the codec options)
        default = defaults[fields[0]]
        if default is dataclasses.MISSING or (isinstance(default, tuple | dict) and param.default is None):
            continue  # required, or None on the command line standing for an empty collection
        assert param.default == default, (name, param.default, default)
        checked += 1
    assert checked >= 25


def test_migrate_shares_the_archive_options_it_takes() -> None:
    archive, migrate = _params("archive"), _params("migrate")
    own = {"ctx", "out", "new_out", "where", "video", "source_fraction", "parent_model"}
    shared = set(migrate) - own
    assert shared <= set(archive), shared - set(archive)
    for name in sorted(shared):
        assert migrate[name].default == archive[name].default, name


def _defaults(command: str) -> dict:
    return {name: param.default for name, param in _params(command).items()}


def test_one_function_builds_the_config_of_archive_and_migrate() -> None:
    options = _defaults("archive") | {"src": "/in", "out": "/out"}
    assert archive_config(options) == ArchiveConfig(src="/in", out="/out")
    given = options | {"quality": 30, "include": ["*.mp4"], "shard": "1/4", "task_resources": "cpu_node=1",
                       "preset": "fast", "target_vmaf": 90.0, "per_gop": True, "stall_timeout": 60.0}  # fmt: skip
    built = archive_config(given)
    assert (built.target, built.include, built.shard, built.task_resources) == (
        RateTarget("quality", 30.0),
        ("*.mp4",),
        (1, 4),
        {"cpu_node": 1.0},
    )
    assert built.quality_goal == QualityGoal("vmaf", 90.0, per_gop=True)
    assert (built.codec_options, built.stall_seconds) == ({"preset": "fast"}, 60.0)
    with pytest.raises(ConfigError, match="at most one of --target-kbps"):  # the first bad option wins
        archive_config(given | {"target_bpp": 0.1, "shard": "9/4"})
    migrate = _defaults("migrate") | {"out": "/old", "new_out": "/new"}
    spec = MigrationSpec(where="codec == 'x264'")
    assert archive_config(migrate, src="/old", out="/new", migration=spec) == ArchiveConfig(
        src="/old", out="/new", migration=spec
    )


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "jobs.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )


def test_a_config_file_sets_options_and_the_command_line_wins(
    sample_dir: Path, tmp_path: Path, ray_address: str
) -> None:
    config = tmp_path / "archive.toml"
    config.write_text(
        '# a run people repeat\ncodec = "x265"\nquality = 35\n'
        '[archive]\ngop-frames = 8\nskip_metric = ["lpips", "dists", "vmaf"]\n'
    )
    out = tmp_path / "out"
    result = _cli("archive", str(sample_dir), str(out), "--config", str(config), "--quality", "30",
                  "--address", ray_address)  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [r for p in (out / "manifest").glob("*.parquet") for r in pq.read_table(p).to_pylist()]
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok and {r["codec"] for r in ok} == {"x265"}  # from the file
    assert {r["target_value"] for r in ok} == {30.0}  # the command line over the file's 35
    assert max(r["frame_count"] for r in ok) == 8  # the [archive] table
    assert all(r["vmaf"] is None for r in ok)  # a list option from the file


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('codecs = "x265"\n', "unknown option 'codecs'"),
        ('quality = "high"\n', "quality:"),
        ('skip-metric = "vmaf"\n', "skip-metric takes a list"),
        ('out = "/elsewhere"\n', "unknown option 'out'"),
        ("codec = \n", "not a TOML file"),
        ('[encoder]\ncodec = "x265"\n', "unknown table [encoder]"),
    ],
)
def test_a_bad_config_file_is_one_line_and_nothing_is_written(
    sample_dir: Path, tmp_path: Path, text: str, words: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    result = _cli("archive", str(sample_dir), str(tmp_path / "out"), "--config", str(config))
    assert result.returncode == 2 and words in result.stderr and str(config) in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    assert "out" in NOT_IN_FILE


def test_a_missing_config_file_is_one_line(sample_dir: Path, tmp_path: Path) -> None:
    result = _cli("archive", str(sample_dir), str(tmp_path / "out"), "--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2 and "nope.toml: cannot read" in result.stderr
