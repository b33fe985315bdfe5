"""The archive job's options in one place: which `ArchiveConfig` field each command-line option sets
(`OPTION_FIELDS`, checked against both by `tests/test_archive_options.py`, so neither can drift from
the other), the one `ArchiveConfig` built from them (`archive_config`, for `archive` and `migrate`),
and `--config FILE.toml`.

A config file holds the options of a run people repeat, under their command-line names (`codec`,
`quality`, `storage-class`, `skip-metric = ["vmaf"]`; dashes or underscores), at the top level or in an
`[archive]` table. An option given on the command line wins over the file; the file wins over the
default. Each value is converted and checked exactly as the same option typed on the command line, so
a wrong type or an unknown key is one line naming the file and the key, exit 2, before anything runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.archive.config import ArchiveConfig

#: Command-line parameter -> the `ArchiveConfig` field(s) it sets. Several options may build one field
#: (the rate target, the quality goal, the codec options).
OPTION_FIELDS: dict[str, tuple[str, ...]] = {
    "src": ("src",),
    "out": ("out",),
    "codec": ("codec",),
    "target_kbps": ("target",),
    "target_bpp": ("target",),
    "quality": ("target",),
    "target_vmaf": ("quality_goal",),
    "target_psnr": ("quality_goal",),
    "target_dists": ("quality_goal",),
    "per_gop": ("quality_goal",),
    "max_kbps": ("quality_goal",),
    "search_gops": ("quality_goal",),
    "gop_frames": ("gop_frames",),
    "model": ("model",),
    "gvc_mode": ("codec_options",),
    "gvc_steps": ("codec_options",),
    "gvc_atoms": ("codec_options",),
    "preset": ("codec_options",),
    "endpoint_url": ("endpoint_url",),
    "address": ("address",),
    "actors": ("actors",),
    "gops_per_actor": ("gops_in_flight_per_actor",),
    "max_pixels": ("max_pixels",),
    "num_gpus_per_actor": ("num_gpus_per_actor",),
    "verify_fraction": ("verify_fraction",),
    "limit": ("limit",),
    "retry_failed": ("retry_failed",),
    "include": ("include",),
    "exclude": ("exclude",),
    "run_id": ("run_id",),
    "metrics_every": ("metrics_every",),
    "metrics_sample": ("metrics_sample",),
    "fingerprint_every": ("fingerprint_every",),
    "metric_weights": ("metric_weights",),
    "skip_metric": ("skip_metrics",),
    "shard": ("shard",),
    "actor_resources": ("actor_resources",),
    "task_resources": ("task_resources",),
    "pack": ("pack_mb",),
    "reference": ("reference",),
    "reference_fraction": ("reference_fraction",),
    "reference_seed": ("reference_seed",),
    "reference_preset": ("reference_preset",),
    "compact": ("compact",),
    "compact_every": ("compact_every",),
    "min_psnr": ("min_psnr",),
    "min_vmaf": ("min_vmaf",),
    "fallback": ("fallback",),
    "stall_timeout": ("stall_seconds",),
    "storage_class": ("storage_class",),
    "config": (),  # the file itself
}
#: `ArchiveConfig` fields no archive option sets: tuning kept out of the command line, what `auto`
#: resolves, and the migration (set by `vidarc migrate`).
INTERNAL_FIELDS = frozenset({"cpus_per_actor", "device", "max_gop_retries", "probe_ahead", "migration"})
#: Options a config file may not set: the run's arguments, and the file itself.
NOT_IN_FILE = frozenset({"src", "out", "config", "new_out"})


def archive_config(options: Mapping[str, Any], **fields: Any) -> ArchiveConfig:
    """The `ArchiveConfig` a command's parsed options ask for: each option of `OPTION_FIELDS` the command
    has, converted into its field (several options building one field together, in `OPTION_FIELDS`
    order, so the first bad option is the one reported); a field no option of the command sets keeps
    its default. `fields` are set as given, over the options (`migrate`: its OUT as the source, NEW_OUT,
    the migration)."""
    from pipeline.archive.config import (
        ArchiveConfig,
        QualityGoal,
        quality_goal_from_options,
        rate_target_from_options,
        resources_from_option,
    )

    o = options
    goal_defaults = {f.name: f.default for f in dataclasses.fields(QualityGoal)}  # options migrate lacks
    composite: dict[str, Callable[[], Any]] = {
        "target": lambda: rate_target_from_options(
            o.get("target_kbps"), o.get("target_bpp"), o.get("quality")
        ),
        "quality_goal": lambda: quality_goal_from_options(
            o.get("target_vmaf"),
            o.get("target_psnr"),
            o.get("target_dists"),
            per_gop=o.get("per_gop", goal_defaults["per_gop"]),
            max_kbps=o.get("max_kbps"),
            search_gops=o.get("search_gops", goal_defaults["sample_gops"]),
        ),
        "codec_options": lambda: codec_options(
            o["codec"], o.get("gvc_mode"), o.get("preset"), o.get("gvc_steps"), o.get("gvc_atoms")
        ),
    }
    convert: dict[str, Callable[[Any], Any]] = {
        "include": lambda v: tuple(v or ()),
        "exclude": lambda v: tuple(v or ()),
        "skip_metric": lambda v: tuple(v or ()),
        "shard": parse_shard,
        "actor_resources": lambda v: resources_from_option("--actor-resources", v),
        "task_resources": lambda v: resources_from_option("--task-resources", v),
    }
    built: dict[str, Any] = {}
    for name, targets in OPTION_FIELDS.items():
        if name not in o or not targets:
            continue
        (field,) = targets
        if field in composite:
            if field not in built:
                built[field] = composite[field]()
        else:
            built[field] = convert.get(name, lambda v: v)(o[name])
    return ArchiveConfig(**{**built, **fields})


class ConfigFileError(ValueError):
    """A config file that cannot be used (missing, not TOML, unknown key, wrong type): one line."""


def apply_config_file(ctx: Any, values: dict[str, Any], path: str | None) -> dict[str, Any]:
    """`values` (the command's parameters) with those left at their default taken from the file.

    `ctx`: the command's click context (typer's), which knows each parameter's type and whether the
    command line gave it."""
    if path is None:
        return values
    settings = _read(path)
    params = {p.name: p for p in ctx.command.params if p.name}
    merged = dict(values)
    for key, raw in settings.items():
        name = key.replace("-", "_")
        param = params.get(name)
        if param is None or name in NOT_IN_FILE or param.param_type_name != "option":
            known = ", ".join(sorted(n.replace("_", "-") for n in params if n not in NOT_IN_FILE))
            raise ConfigFileError(f"{path}: unknown option {key!r} (options: {known})")
        source = ctx.get_parameter_source(name)
        if source is not None and source.name != "DEFAULT":
            continue  # the command line wins
        if param.multiple and not isinstance(raw, list):
            raise ConfigFileError(f"{path}: {key} takes a list, e.g. {key} = [{raw!r}]")
        try:
            merged[name] = param.process_value(ctx, raw)
        except Exception as exc:  # click's BadParameter, as typer vendors it
            message = getattr(exc, "message", None) or str(exc)
            raise ConfigFileError(f"{path}: {key}: {message}") from None
        if param.multiple:
            merged[name] = list(merged[name])
    return merged


def _read(path: str) -> dict[str, Any]:
    import tomllib

    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        document = tomllib.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigFileError(f"{path}: not a TOML file ({exc})") from None
    tables = [k for k, v in document.items() if isinstance(v, dict)]
    if tables and tables != ["archive"]:
        raise ConfigFileError(
            f"{path}: unknown table [{tables[0]}] (options go at the top or under [archive])"
        )
    return {**{k: v for k, v in document.items() if k != "archive"}, **document.get("archive", {})}


def parse_shard(text: str | None) -> tuple[int, int] | None:
    from pipeline.archive.config import ConfigError
    from pipeline.format.keys import parse_shard as parse

    if text is None:
        return None
    try:
        return parse(text)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def codec_options(
    codec: str,
    gvc_mode: str | None,
    preset: str | None,
    gvc_steps: int | None = None,
    gvc_atoms: int | None = None,
) -> dict[str, str | int]:
    """Codec-specific options, refused where they do not apply (rather than silently ignored)."""
    from pipeline.archive.config import ConfigError

    options: dict[str, str | int] = {}
    for flag, key, value, low in (
        ("--gvc-steps", "steps", gvc_steps, 2),
        ("--gvc-atoms", "atoms", gvc_atoms, 2),
    ):
        if value is None:
            continue
        if codec != "gvc":
            raise ConfigError(f"{flag} applies to --codec gvc, not {codec}")
        if value < low:
            raise ConfigError(f"{flag} must be at least {low}, got {value}")
        options[key] = value
    if gvc_mode is not None:
        if codec != "gvc":
            raise ConfigError(f"--gvc-mode applies to --codec gvc, not {codec}")
        if gvc_mode not in ("t2v", "i2v", "flf2v"):
            raise ConfigError(f"--gvc-mode must be t2v, i2v or flf2v, got {gvc_mode!r}")
        options["mode"] = gvc_mode
    if preset is not None:
        if codec not in ("x264", "x265", "av1"):
            raise ConfigError(f"--preset applies to the classic codecs, not {codec}")
        options["preset"] = preset
    return options


def run_with_ray(run: Any, config: Any) -> Any:
    """Run, and shut down the Ray connection only if this command opened it."""
    import ray

    owned = not ray.is_initialized()
    try:
        return run(config)
    finally:
        if owned and ray.is_initialized():
            ray.shutdown()


def config_fields() -> set[str]:
    from pipeline.archive.config import ArchiveConfig

    return {f.name for f in dataclasses.fields(ArchiveConfig)}
