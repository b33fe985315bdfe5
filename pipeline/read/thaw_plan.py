"""Which archive objects a `vidarc thaw` concerns: the objects holding the named videos, or those of the
videos a `--where` filter selects (every archived video when neither is given). A pack counts once,
with every selected video it holds.

Everything is resolved before any restore request is sent, so a name that is not in the archive or a
filter that selects nothing stops the command with one line and nothing asked of the store.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from pipeline.dataset.plan import DatasetError, plan_archive
from pipeline.read.restore import RestoreError, find_video
from pipeline.store.storage import StorageError, filesystem


class ThawSelectionError(Exception):
    """The selection cannot be made (unknown video, bad filter, nothing selected): one line."""


@dataclasses.dataclass(frozen=True)
class SelectedObject:
    uri: str
    path: str
    video_keys: tuple[str, ...]
    storage_class: str | None  # as the manifest records it (a hint: lifecycle rules move objects)


def select_objects(
    out: str, videos: Sequence[str] = (), *, where: str | None = None, endpoint_url: str | None = None
) -> list[SelectedObject]:
    """The objects to thaw (or to report on), in URI order."""
    if videos and where:
        raise ThawSelectionError("give videos or --where, not both")
    found: dict[str, list[str]] = {}
    classes: dict[str, str | None] = {}
    try:
        if videos:
            for name in videos:
                entry = find_video(out, name, endpoint_url=endpoint_url)
                found.setdefault(entry.archive_uri, []).append(entry.video_key)
        else:
            plan = plan_archive(out, where=where, columns=("video_key",), endpoint_url=endpoint_url)
            for obj in plan.objects:
                found.setdefault(obj.archive_uri, []).append(obj.video_key)
                classes[obj.archive_uri] = obj.storage_class
    except (RestoreError, DatasetError, StorageError) as exc:
        raise ThawSelectionError(str(exc).splitlines()[0]) from None
    return [
        SelectedObject(
            uri, filesystem(uri, endpoint_url=endpoint_url)[1], tuple(sorted(keys)), classes.get(uri)
        )
        for uri, keys in sorted(found.items())
    ]
