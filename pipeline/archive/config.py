"""The archive job's configuration as data: one dataclass the CLI fills and the workflow reads.

Defaults a user does not set are resolved here, in one place, so `runs/<run_id>/config.json` records
exactly what ran. Nothing here holds credentials: they come from the standard AWS environment or
profiles at the point of use, and `as_record` redacts anything that looks like one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from codec.base import RateTarget
from codec.registry import CLASSIC_CODECS, NEURAL_CODECS
from pipeline.metrics import DEFAULT_SAMPLE_FRACTION
from pipeline.sources.media import DEFAULT_MAX_PIXELS
from pipeline.store.storage import redact

#: Codec-native quality used when no rate option is given: visually good, not wasteful.
#: CRF for x264/x265 (their "visually lossless-ish" defaults), CRF for SVT-AV1, and the middle of the
#: neural codecs' quality ranges (GLVC: learned quantisation-scale index; GVC: atoms per step).
#: The neural codecs' default quality floor (`floor.py`), RGB PSNR in dB. The bundled GLVC model reaches about 23–24 dB on
#: natural content at 0.05 bpp (the demo videos in `samples/` included), and its failures land far
#: below: ~10 dB on colour bars, ~6 dB on a one-pixel checkerboard, ~15 dB on a Mandelbrot zoom. 20 dB
#: sits between the two with margin on both sides; under it colours and shapes are visibly wrong, not
#: merely soft.
DEFAULT_MIN_PSNR = 20.0

DEFAULT_QUALITY: dict[str, float] = {"x264": 23, "x265": 28, "av1": 35, "glvc": 32, "gvc": 16}


METRIC_SWITCHES: tuple[str, ...] = ("lpips", "dists", "vmaf", "temporal")


#: Metrics a quality target can name (`--target-vmaf`, `--target-psnr`, `--target-dists`).
QUALITY_TARGET_METRICS: tuple[str, ...] = ("vmaf", "psnr", "dists")


class ConfigError(ValueError):
    """The options do not make a valid job (one line, shown as is)."""


@dataclasses.dataclass(frozen=True)
class QualityGoal:
    """Archive each video (or GOP) at the cheapest codec setting whose `metric` reaches `target`.

    Per video (default), the search runs on `sample_gops` GOPs spread over the video and the target
    applies to their mean; all of the video's GOPs then share the chosen setting. With `per_gop`, every
    GOP is searched on itself, and the winning encoding is the one stored. `max_kbps` caps the rate.
    """

    metric: str
    target: float
    per_gop: bool = False
    max_kbps: float | None = None
    sample_gops: int = 3

    def as_record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class MigrationSpec:
    """`vidarc migrate OUT NEW_OUT`: the run's sources are OUT's archived videos (`archive/migration.py`).

    `where` and `keys` select them (a video is migrated whole when any of its rows matches `where`);
    `source_fraction` of each video's GOPs (a seeded sample, at least one) also get `source_psnr`
    against the original source where it still exists; `parent_model` decodes a neural parent whose
    model is not bundled."""

    where: str | None = None
    keys: tuple[str, ...] = ()
    source_fraction: float = 0.1
    parent_model: str | None = None


@dataclasses.dataclass
class ArchiveConfig:
    src: str
    out: str
    codec: str = "x264"
    target: RateTarget | None = None
    gop_frames: int | None = None
    model: str | None = None
    endpoint_url: str | None = None
    address: str | None = None
    actors: int = 1
    num_gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    device: str = "auto"
    verify_fraction: float | None = None
    limit: int | None = None
    retry_failed: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    run_id: str | None = None
    #: GOPs queued per actor: enough that an actor never waits for the next decode, few enough that
    #: memory stays bounded (decoded frames of at most actors × this many GOPs exist at once).
    gops_in_flight_per_actor: int = 2
    #: A GOP whose actor died is retried on a fresh actor this many times before its video fails.
    max_gop_retries: int = 2
    #: Videos probed ahead of the encoders (probing is cheap; this bounds driver memory).
    probe_ahead: int = 8
    #: An encode actor holding calls that finishes none for this long is killed and its GOPs retried
    #: (hung, not dead). Generous: one GOP of a big model on a slow device takes minutes. None: never.
    stall_seconds: float | None = 3600.0
    codec_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: Quality metrics on every Nth GOP of each video (measuring costs more than coding for fast codecs).
    metrics_every: int = 1
    #: The decode proof's pixel part (reconstruction sha256 + luma fingerprint) on every Nth GOP of each
    #: video (and on every measured GOP). 1: every GOP, so verify can judge any GOP's pixels; N > 1 skips
    #: the neural codecs' pixel decode on the others (GLVC: ~60% of its encode time), whose proof is
    #: then the exact part only (`decode_check` "exact-part").
    fingerprint_every: int = 1
    #: Share of the measured GOPs that also get the expensive metrics (MS-SSIM, VMAF, LPIPS, DISTS), a
    #: seeded sample (`pipeline.metrics.MetricsSample`); 1: every measured GOP.
    metrics_sample: float = DEFAULT_SAMPLE_FRACTION
    #: Metrics switched off ("lpips", "dists", "vmaf", "temporal"); their columns stay null with a note.
    skip_metrics: tuple[str, ...] = ()
    #: Folder with the perceptual metrics' official weights (else the torch hub cache is searched).
    metric_weights: str | None = None
    #: Find each video's (or GOP's) rate setting from a quality target instead of a fixed `target`.
    quality_goal: QualityGoal | None = None
    #: `--shard i/n`: this job archives the videos whose key hashes to shard i of n (`keys.shard_of`).
    shard: tuple[int, int] | None = None
    #: Ray custom resources each encode actor asks for (e.g. {"gpu_node": 1}): where the actors run.
    actor_resources: dict[str, float] = dataclasses.field(default_factory=dict)
    #: Ray custom resources each probe/decode/commit task asks for: where the CPU work runs.
    task_resources: dict[str, float] = dataclasses.field(default_factory=dict)
    #: `--pack N_MB`: many videos per archive object (`pipeline.format.pack`), each pack about N MB of payload.
    pack_mb: float | None = None
    #: Pixel budget per frame (default 8K): larger sources fail at probe time, before any decoding.
    max_pixels: int = DEFAULT_MAX_PIXELS
    #: Classic codec coding a sample of GOPs at the archive's measured quality (`archive/reference.py`).
    reference: str | None = None
    #: Fraction of each video's GOPs sampled for the reference (a few % is enough for a tight interval).
    reference_fraction: float = 0.05
    reference_seed: int = 0
    reference_preset: str | None = None
    #: Compact the manifest as part of the run (`archive/compaction.py`): when it ends, and every
    #: `compact_every` committed videos during it (None: only at the end). `--no-compact`: never.
    compact: bool = True
    compact_every: int | None = 10_000
    #: The quality floor (`archive/floor.py`): each video's frame-weighted mean RGB PSNR (dB) or VMAF
    #: must reach it. None: the codec's default (`DEFAULT_MIN_PSNR` for glvc/gvc, off for the
    #: classic codecs); 0: off. At most one of the two.
    min_psnr: float | None = None
    min_vmaf: float | None = None
    #: Classic codec a video under the floor is coded again with (None: such a video fails).
    fallback: str | None = None
    #: S3 storage class of the video and pack objects (`pipeline/store/storage_class.py`); manifests,
    #: markers, leases and indexes stay in STANDARD. None: the bucket's default (STANDARD).
    storage_class: str | None = None
    #: A migration: `src` is then an archive whose videos are coded again (None: an ordinary run).
    migration: MigrationSpec | None = None

    def resolved(self) -> ArchiveConfig:
        """A copy with defaults filled in, validated; raises ConfigError with a one-line reason."""
        from codec.registry import available_codecs

        if self.codec not in available_codecs():
            raise ConfigError(f"unknown codec {self.codec!r}; choose one of {', '.join(available_codecs())}")
        if self.actors < 1:
            raise ConfigError(f"--actors must be at least 1, got {self.actors}")
        if self.num_gpus_per_actor < 0:
            raise ConfigError(f"--num-gpus-per-actor must be >= 0, got {self.num_gpus_per_actor}")
        if self.gop_frames is not None and self.gop_frames < 1:
            raise ConfigError(f"--gop-frames must be at least 1, got {self.gop_frames}")
        if self.verify_fraction is not None and not 0 < self.verify_fraction <= 1:
            raise ConfigError(f"--verify-fraction must be in (0, 1], got {self.verify_fraction}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {self.limit}")
        if self.stall_seconds is not None and not self.stall_seconds > 0:
            raise ConfigError(f"--stall-timeout must be positive, got {self.stall_seconds:g}")
        if self.compact_every is not None and self.compact_every < 1:
            raise ConfigError(f"--compact-every must be at least 1, got {self.compact_every}")
        if self.max_pixels < 1:
            raise ConfigError(f"--max-pixels must be at least 1, got {self.max_pixels}")
        if self.gops_in_flight_per_actor < 1:
            raise ConfigError(f"--gops-per-actor must be at least 1, got {self.gops_in_flight_per_actor}")
        if self.metrics_every < 1:
            raise ConfigError(f"--metrics-every must be at least 1, got {self.metrics_every}")
        if not 0 < self.metrics_sample <= 1:
            raise ConfigError(
                f"--metrics-sample is a fraction of GOPs in (0, 1] (1: every GOP), got {self.metrics_sample:g}"
            )
        if self.fingerprint_every < 1:
            raise ConfigError(f"--fingerprint-every must be at least 1, got {self.fingerprint_every}")
        unknown = set(self.skip_metrics) - set(METRIC_SWITCHES)
        if unknown:
            raise ConfigError(
                f"--skip-metric: unknown {sorted(unknown)}; choose from {', '.join(METRIC_SWITCHES)}"
            )
        _check_quality_goal(self)
        _check_migration(self)
        _check_gvc_mode(self)
        storage_class = self.storage_class
        if storage_class is not None:
            from pipeline.store.storage_class import StorageClassError, check_storage_class

            try:
                storage_class = check_storage_class(storage_class)
            except StorageClassError as exc:
                raise ConfigError(f"--storage-class: {exc}") from None
            if storage_class != "STANDARD" and not self.out.startswith(("s3://", "s3a://")):
                raise ConfigError(
                    f"--storage-class {storage_class} needs an s3:// OUT; {self.out} is a local folder"
                )
        if self.pack_mb is not None and not 0 < self.pack_mb <= 4096:
            raise ConfigError(f"--pack is in MB, in (0, 4096]; got {self.pack_mb:g}")
        if self.shard is not None:
            index, count = self.shard
            if count < 1 or not 0 <= index < count:
                raise ConfigError(f"--shard {index}/{count}: need n >= 1 and 0 <= i < n")
        for flag, resources in (
            ("--actor-resources", self.actor_resources),
            ("--task-resources", self.task_resources),
        ):
            for name, amount in resources.items():
                if (
                    not isinstance(name, str)
                    or not name
                    or not isinstance(amount, int | float)
                    or amount <= 0
                ):
                    raise ConfigError(
                        f"{flag}: {name!r}={amount!r} is not a resource name with a positive amount"
                    )
        _check_reference(self)
        min_psnr = _check_floor(self)
        gop_frames = _resolved_gop_frames(self)
        # A quality goal chooses each video's setting by search; there is no job-wide target then.
        target = (
            None
            if self.quality_goal
            else self.target or RateTarget("quality", DEFAULT_QUALITY.get(self.codec, 23))
        )
        device = self.device
        if device == "auto":
            device = "cuda" if self.num_gpus_per_actor > 0 else "cpu"
        return dataclasses.replace(
            self,
            target=target,
            device=device,
            gop_frames=gop_frames,
            min_psnr=min_psnr,
            storage_class=storage_class,
        )

    def metrics_sample_spec(self) -> Any:
        """The GOPs whose expensive metrics are measured (`pipeline.metrics.MetricsSample`)."""
        from pipeline.metrics import MetricsSample

        return MetricsSample(self.metrics_sample)

    def always_measured(self) -> tuple[str, ...]:
        """Expensive metrics measured on every GOP whatever the sample: the quality target's metric (its
        audit checks each GOP) and a VMAF floor's (it is checked on each video's mean)."""
        from pipeline.metrics import EXPENSIVE_METRICS

        wanted = {self.quality_goal.metric if self.quality_goal else None, "vmaf" if self.min_vmaf else None}
        return tuple(m for m in EXPENSIVE_METRICS if m in wanted)

    def target_record(self) -> dict[str, Any]:
        """What the user asked for, as stored in headers and rows: a rate target or the quality goal."""
        goal = self.quality_goal
        if goal is not None:
            return {"kind": goal.metric, "value": goal.target}
        assert self.target is not None
        return self.target.to_record()

    def as_record(self) -> dict[str, Any]:
        """JSON-ready, credential-free view for config.json and logs."""
        record = dataclasses.asdict(self)
        record["target"] = self.target.to_record() if self.target else None
        record["quality_goal"] = self.quality_goal.as_record() if self.quality_goal else None
        for name in ("include", "exclude", "skip_metrics"):
            record[name] = list(getattr(self, name))
        record["shard"] = f"{self.shard[0]}/{self.shard[1]}" if self.shard else None
        return _redact_values(record)


def _check_migration(config: ArchiveConfig) -> None:
    spec = config.migration
    if spec is None:
        return
    if not 0 <= spec.source_fraction <= 1:
        raise ConfigError(f"--source-fraction must be in [0, 1], got {spec.source_fraction:g}")
    old, new = _comparable(config.src), _comparable(config.out)
    if new == old or new.startswith(old + "/"):
        raise ConfigError(
            f"NEW_OUT {config.out} is {'OUT itself' if new == old else 'inside OUT'}; a migration writes a new archive "
            "beside the old one"
        )


def _comparable(uri: str) -> str:
    """`uri` as a comparable location: a local path made absolute (links resolved), a URL unslashed."""
    import os

    if "://" in uri and not uri.startswith("file://"):
        return uri.rstrip("/")
    return os.path.realpath(uri.removeprefix("file://")).rstrip("/")


def _check_quality_goal(config: ArchiveConfig) -> None:
    goal = config.quality_goal
    if goal is None:
        return
    if config.target is not None:
        raise ConfigError(
            "give either a rate option (--target-kbps/--target-bpp/--quality) or a quality target"
        )
    if goal.metric not in QUALITY_TARGET_METRICS:
        raise ConfigError(f"unknown quality target metric {goal.metric!r}")
    switch = "vmaf" if goal.metric == "vmaf" else "dists" if goal.metric == "dists" else None
    if switch in config.skip_metrics:
        raise ConfigError(
            f"--target-{goal.metric} needs {goal.metric}, which --skip-metric {switch} switches off"
        )
    if goal.max_kbps is not None and not goal.max_kbps > 0:
        raise ConfigError(f"--max-kbps must be positive, got {goal.max_kbps:g}")
    if goal.sample_gops < 1:
        raise ConfigError(f"--search-gops must be at least 1, got {goal.sample_gops}")
    if goal.metric == "dists" and not 0 < goal.target < 1:
        raise ConfigError(f"--target-dists is a distance in (0, 1), lower is better; got {goal.target:g}")
    if goal.metric == "vmaf" and not 0 < goal.target <= 100:
        raise ConfigError(f"--target-vmaf is a score in (0, 100], got {goal.target:g}")
    if goal.metric == "psnr" and not goal.target > 0:
        raise ConfigError(f"--target-psnr is in dB and must be positive, got {goal.target:g}")


def _check_floor(config: ArchiveConfig) -> float | None:
    """Validate the floor options; returns `min_psnr` with the codec's default filled in (a VMAF floor
    replaces the default PSNR one; 0 keeps a floor off)."""
    psnr, vmaf = config.min_psnr, config.min_vmaf
    if psnr is not None and not (psnr == 0 or 0 < psnr <= 100):
        raise ConfigError(f"--min-psnr is in dB, in (0, 100] (0 switches the floor off); got {psnr:g}")
    if vmaf is not None and not 0 <= vmaf <= 100:
        raise ConfigError(f"--min-vmaf is a VMAF score in (0, 100] (0 switches it off); got {vmaf:g}")
    if psnr and vmaf:
        raise ConfigError("give one quality floor: --min-psnr or --min-vmaf, not both")
    if vmaf and "vmaf" in config.skip_metrics:
        raise ConfigError("--min-vmaf needs vmaf, which --skip-metric vmaf switches off")
    if psnr is None and not vmaf and config.codec in NEURAL_CODECS:
        psnr = DEFAULT_MIN_PSNR
    if config.fallback is not None:
        if config.fallback not in CLASSIC_CODECS:
            raise ConfigError(
                f"--fallback must be one of {', '.join(CLASSIC_CODECS)} (a classic codec), got {config.fallback!r}"
            )
        if config.fallback == config.codec:
            raise ConfigError(f"--fallback {config.fallback} is the archive's own codec")
        if not (psnr or vmaf):
            raise ConfigError("--fallback applies to a quality floor (--min-psnr/--min-vmaf), which is off")
    return psnr


def _check_reference(config: ArchiveConfig) -> None:
    if config.reference is None:
        if config.reference_preset is not None:
            raise ConfigError("--reference-preset applies to a --reference codec")
        return
    if config.reference not in CLASSIC_CODECS:
        raise ConfigError(
            f"--reference must be one of {', '.join(CLASSIC_CODECS)} (a classic codec), got {config.reference!r}"
        )
    if not 0 < config.reference_fraction <= 1:
        raise ConfigError(f"--reference-fraction must be in (0, 1], got {config.reference_fraction:g}")
    from codec.errors import CodecError
    from codec.registry import build_codec

    options = {} if config.reference_preset is None else {"preset": config.reference_preset}
    try:  # a bad preset would fail every reference task: refuse it up-front
        build_codec(config.reference, model=None, device="cpu", options=options)
    except CodecError as exc:
        raise ConfigError(f"--reference {config.reference}: {exc}") from None


def _resolved_gop_frames(config: ArchiveConfig) -> int | None:
    """The GOP length asked for or the one the model card declares, checked by the codec's class (no
    model is loaded, no actor asked). Last of the checks: a neural codec's class imports torch."""
    from codec.errors import CodecError
    from codec.modeldir import card_gop_frames
    from codec.registry import codec_class

    gop_frames, origin = config.gop_frames, f"--gop-frames {config.gop_frames}"
    if gop_frames is None and config.codec in ("glvc", "gvc"):
        gop_frames = card_gop_frames(config.codec, config.model)  # the GOP its model was trained on
        origin = f"the model card's {config.codec}.gop_frames {gop_frames}"
    if gop_frames is not None:
        try:
            codec_class(config.codec).check_gop_frames(gop_frames)
        except CodecError as exc:
            raise ConfigError(f"{origin}: {exc}") from None
    return gop_frames


def _check_gvc_mode(config: ArchiveConfig) -> None:
    """A GVC mode the model cannot condition on is refused here, from its configs, before Ray starts
    and before any weight is read (the encode actor checks again). Local model folders only: a remote
    model is fetched by the actors, not by the driver."""
    mode = config.codec_options.get("mode")
    if config.codec != "gvc" or mode is None:
        return
    from codec.errors import CodecError
    from codec.modeldir import bundled_model_path, open_model_dir
    from codec.wan import check_mode, flow_layout

    if config.model is not None and not Path(config.model).is_dir():
        return
    try:
        source = open_model_dir(config.model or bundled_model_path())
        check_mode(mode, flow_layout(source.path).modes, source.label)
    except CodecError as exc:
        raise ConfigError(f"codec gvc: {exc}") from None


def quality_goal_from_options(
    target_vmaf: float | None,
    target_psnr: float | None,
    target_dists: float | None,
    *,
    per_gop: bool,
    max_kbps: float | None,
    search_gops: int,
) -> QualityGoal | None:
    """At most one quality target; `--per-gop`/`--max-kbps` only make sense with one."""
    given = [
        (metric, value)
        for metric, value in (("vmaf", target_vmaf), ("psnr", target_psnr), ("dists", target_dists))
        if value is not None
    ]
    if len(given) > 1:
        raise ConfigError("give at most one of --target-vmaf, --target-psnr, --target-dists")
    if not given:
        if per_gop or max_kbps is not None:
            raise ConfigError(
                "--per-gop and --max-kbps apply to a quality target (--target-vmaf/-psnr/-dists)"
            )
        return None
    metric, value = given[0]
    return QualityGoal(metric, float(value), per_gop=per_gop, max_kbps=max_kbps, sample_gops=search_gops)


def resources_from_option(flag: str, text: str | None) -> dict[str, float]:
    """`--actor-resources '{"gpu_node": 1}'` (JSON) or 'name=amount,name=amount' -> a dict."""
    import json

    if not text:
        return {}
    try:
        if text.strip().startswith("{"):
            value = json.loads(text)
        else:
            value = {k.strip(): float(v) for k, _, v in (p.partition("=") for p in text.split(","))}
        if not isinstance(value, dict):
            raise ValueError
        return {str(k): float(v) for k, v in value.items()}
    except (ValueError, TypeError):
        raise ConfigError(
            f'{flag} {text!r}: expected JSON like {{"gpu_node": 1}} or name=amount,...'
        ) from None


def rate_target_from_options(
    target_kbps: float | None, target_bpp: float | None, quality: float | None
) -> RateTarget | None:
    """At most one rate option; None means the codec's default quality."""
    given = [
        (k, v) for k, v in (("kbps", target_kbps), ("bpp", target_bpp), ("quality", quality)) if v is not None
    ]
    if len(given) > 1:
        raise ConfigError("give at most one of --target-kbps, --target-bpp, --quality")
    if not given:
        return None
    try:
        return RateTarget(given[0][0], float(given[0][1]))  # type: ignore[arg-type]
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _redact_values(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _redact_values(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_values(v) for v in value]
    if isinstance(value, str):
        return redact(value)
    return value
