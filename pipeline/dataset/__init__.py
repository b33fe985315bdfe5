"""Archives as training data: clips (frames, or GLVC latents without a pixel decode) straight from an
archive into Ray Data (`read_archive`) or PyTorch (`ArchiveClipDataset`), and into files (`export`).

The modules: `plan` (manifest -> selected GOPs grouped by object; no payload read), `clips` (ranged
reads and decoding into clip rows), `ray_source` (the Ray Data datasource), `torch_dataset` (the
IterableDataset), `export` (mp4 files or WebDataset shards). Ray and torch are imported only by the
module that needs them, so `from pipeline.dataset import ArchiveClipDataset` does not import Ray.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.dataset.plan import (
    DEFAULT_COLUMNS,
    LATENT_CODECS,
    OUTPUTS,
    ArchivePlan,
    ClipSpec,
    DamagedManifestWarning,
    DatasetError,
    plan_archive,
)

if TYPE_CHECKING:
    from pipeline.dataset.torch_dataset import ArchiveClipDataset

__all__ = [
    "DEFAULT_COLUMNS",
    "LATENT_CODECS",
    "OUTPUTS",
    "ArchiveClipDataset",
    "ArchivePlan",
    "ClipSpec",
    "DamagedManifestWarning",
    "DatasetError",
    "plan_archive",
    "read_archive",
]


def read_archive(out: Any, **options: Any):
    """`pipeline.dataset.ray_source.read_archive` (imports Ray on first use)."""
    from pipeline.dataset.ray_source import read_archive as _read_archive

    return _read_archive(out, **options)


def __getattr__(name: str) -> Any:
    if name == "ArchiveClipDataset":
        from pipeline.dataset.torch_dataset import ArchiveClipDataset

        return ArchiveClipDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
