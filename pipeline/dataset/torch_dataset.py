"""`ArchiveClipDataset`: the same clips as `read_archive`, as a torch IterableDataset for one machine.

Order: an epoch's clip order is a pure function of the plan, `seed` and the epoch (`set_epoch`): GOPs
are permuted, then each GOP's windows, so the clips of one GOP stay together and one decode serves
them. That order is cut into global batches of `batch_size` clips; batch k goes to distributed rank
k % world_size and, inside a rank, to DataLoader worker (k // world_size) % num_workers. With a
DataLoader of the same `batch_size` (its workers are visited in turn), every rank therefore sees the
epoch's batches in order whatever `num_workers` is, and a resume position is one number: the clips
of the epoch consumed so far (`state_dict` / `load_state_dict`), skipped without reading anything.

Rows are dicts of tensors and plain values, so `default_collate` batches them: `frames` (uint8
T×H×W×3) and/or `latents` (float32 C×F×h×w) with `latents_mean`/`latents_std` tensors and
`tokenizer_id`; manifest nulls become NaN (numbers), -1 (integers) or "" (text).
"""

from __future__ import annotations

import collections.abc
import math
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import IterableDataset, get_worker_info

from pipeline.dataset.clips import ClipReader
from pipeline.dataset.plan import DEFAULT_COLUMNS, ClipSpec, DatasetError, plan_archive
from pipeline.format.schema import MANIFEST_SCHEMA

_STATE_VERSION = 1


class ArchiveClipDataset(IterableDataset):
    """Clips of archive(s) `out` (see `read_archive` for the row and the options they share).

    `shuffle`/`seed`: deterministic order per epoch. `batch_size`: the DataLoader's batch size (it
    decides which worker yields which clips). `rank`/`world_size`: default to torch.distributed's
    when it is initialised. `device`/`model`: where and with which weights neural codecs decode.
    """

    def __init__(
        self,
        out: str | collections.abc.Sequence[str],
        *,
        where: str | None = None,
        output: str = "frames",
        clip_frames: int | None = None,
        stride: int | None = None,
        columns: collections.abc.Sequence[str] = DEFAULT_COLUMNS,
        endpoint_url: str | None = None,
        shuffle: bool = True,
        seed: int = 0,
        batch_size: int = 1,
        rank: int | None = None,
        world_size: int | None = None,
        device: str = "cpu",
        model: str | None = None,
        allow_damaged: bool = False,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise DatasetError(f"batch_size must be at least 1, got {batch_size}")
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.world_size = world_size or (torch.distributed.get_world_size() if distributed else 1)
        self.rank = rank if rank is not None else (torch.distributed.get_rank() if distributed else 0)
        if not 0 <= self.rank < self.world_size:
            raise DatasetError(f"rank {self.rank} is outside world_size {self.world_size}")
        spec = ClipSpec(output=output, clip_frames=clip_frames, stride=stride)
        self.plan = plan_archive(
            out,
            where=where,
            spec=spec,
            columns=columns,
            endpoint_url=endpoint_url,
            allow_damaged=allow_damaged,
        )
        self.shuffle, self.seed, self.batch_size = shuffle, int(seed), int(batch_size)
        self.endpoint_url, self.device, self.model = endpoint_url, device, model
        self.epoch = 0
        self._start = 0  # clips of `epoch` already consumed (a resume point)
        self._yielded = 0  # clips this process yielded since `_start`
        self._reader: ClipReader | None = None

    # -- order ------------------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Use the order of `epoch`; a resume point loaded for another epoch is dropped. (DataLoader
        workers get a copy of the dataset when an iteration starts, so call it before; with
        `persistent_workers=True` the copies never see it.)"""
        if epoch != self.epoch:
            self._start = 0
        self.epoch, self._yielded = int(epoch), 0

    def order(self, epoch: int | None = None) -> list[tuple[int, int, int]]:
        """(object, GOP, window start) of every clip of `epoch`, in the order the epoch reads them."""
        epoch = self.epoch if epoch is None else epoch
        gops = [(o, g) for o, obj in enumerate(self.plan.objects) for g in range(len(obj.gops))]
        rng = np.random.default_rng([self.seed, epoch]) if self.shuffle else None
        if rng is not None:
            gops = [gops[i] for i in rng.permutation(len(gops))]
        clips = []
        for o, g in gops:
            starts = [s for s, _ in self.plan.spec.windows(self.plan.objects[o].gops[g].frame_count)]
            if rng is not None:
                starts = [starts[i] for i in rng.permutation(len(starts))]
            clips.extend((o, g, s) for s in starts)
        return clips

    def _batches(self, count: int, worker: int, workers: int) -> collections.abc.Iterator[range]:
        for k in range(math.ceil(count / self.batch_size)):
            if k % self.world_size == self.rank and (k // self.world_size) % workers == worker:
                yield range(k * self.batch_size, min(count, (k + 1) * self.batch_size))

    def __len__(self) -> int:
        """Clips this rank yields in a whole epoch (all its workers together)."""
        return sum(len(b) for b in self._batches(len(self.plan.clips()), 0, 1))

    # -- iteration --------------------------------------------------------------------------------------
    def __iter__(self) -> collections.abc.Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        order = self.order()[self._start :]
        reader = self.reader
        self._yielded = 0
        decoded: tuple[tuple[int, int], dict[int, dict[str, Any]]] | None = None
        for batch in self._batches(len(order), worker, workers):
            for position in batch:
                o, g, start = order[position]
                if decoded is None or decoded[0] != (o, g):  # a GOP's clips mostly come together
                    obj = self.plan.objects[o]
                    fetched = reader.read_gop(obj, obj.gops[g])
                    rows = reader.clips(fetched)
                    decoded = ((o, g), {r["first_frame"] - fetched.gop.first_frame: r for r in rows})
                self._yielded += 1
                yield _to_torch(decoded[1][start])

    @property
    def reader(self) -> ClipReader:
        """This process's reader (its `reads`/`bytes_read` count what the iteration fetched)."""
        if self._reader is None:
            self._reader = ClipReader(
                self.plan.spec,
                self.plan.columns,
                endpoint_url=self.endpoint_url,
                device=self.device,
                model=self.model,
            )
        return self._reader

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_reader"] = None  # each DataLoader worker opens its own
        return state

    # -- resuming ---------------------------------------------------------------------------------------
    def state_dict(self, consumed: int | None = None) -> dict[str, Any]:
        """The resume point: epoch and clips of it consumed by all ranks.

        `consumed`: clips this rank consumed since the epoch (or the last resume) started; by default
        the clips this process yielded, which is right without DataLoader workers. With workers, pass
        batches consumed × batch_size (ranks are assumed to consume equally, as DDP does).
        """
        mine = self._yielded if consumed is None else int(consumed)
        return {
            "version": _STATE_VERSION,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "epoch": self.epoch,
            "position": min(len(self.plan.clips()), self._start + mine * self.world_size),
            "clips": len(self.plan.clips()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()`'s point: the next iteration skips the consumed clips unread."""
        clips = len(self.plan.clips())
        if state.get("version") != _STATE_VERSION:
            raise DatasetError(f"unknown dataset state version {state.get('version')!r}")
        if state["clips"] != clips or state["seed"] != self.seed or state["shuffle"] != self.shuffle:
            raise DatasetError(
                f"the saved position is for another selection or order ({state['clips']} clips, seed "
                f"{state['seed']}, shuffle {state['shuffle']}; now {clips}, {self.seed}, {self.shuffle})"
            )
        self.epoch, self._start, self._yielded = int(state["epoch"]), int(state["position"]), 0


def _to_torch(row: dict[str, Any]) -> dict[str, Any]:
    converted: dict[str, Any] = {}
    for name, value in row.items():
        if isinstance(value, np.ndarray):
            converted[name] = torch.from_numpy(np.ascontiguousarray(value))
        elif name in MANIFEST_SCHEMA.names:
            converted[name] = _collatable(value, MANIFEST_SCHEMA.field(name).type)
        else:
            converted[name] = value
    return converted


def _collatable(value: Any, kind: pa.DataType) -> Any:
    """A manifest value default_collate can batch: nulls as NaN / -1 / "", timestamps as ISO text."""
    if pa.types.is_floating(kind):
        return math.nan if value is None else float(value)
    if pa.types.is_integer(kind):
        return -1 if value is None else int(value)
    if pa.types.is_timestamp(kind):
        return "" if value is None else value.isoformat()
    if pa.types.is_boolean(kind):
        return bool(value)
    return "" if value is None else value
