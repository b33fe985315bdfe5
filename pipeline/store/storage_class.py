"""S3 storage classes: which exist, which must be thawed before a GET, and what a HEAD says of a thaw.

Read-side module (restore, verify, export, thaw and the costs all need it; it imports nothing of the
write side). The archive writes video and pack objects to the class the user chose
(`vidarc archive --storage-class`); manifests, markers, leases, indexes and summaries always stay in
STANDARD, so listing, audits and resumes never touch cold storage.

GLACIER (Flexible Retrieval) and DEEP_ARCHIVE objects cannot be read until a restore request has made
a temporary copy (`vidarc thaw`); GLACIER_IR and STANDARD_IA are read like STANDARD (they cost more per
GET, see `pipeline/audit/prices.py`). A lifecycle rule may move objects to a colder class after they
were written, so the class in the manifest is a hint: the store's HEAD is the truth.
"""

from __future__ import annotations

import dataclasses
import re

STORAGE_CLASSES: tuple[str, ...] = ("STANDARD", "STANDARD_IA", "GLACIER_IR", "GLACIER", "DEEP_ARCHIVE")
#: Classes whose objects need a restore request before any GET.
COLD_CLASSES: frozenset[str] = frozenset({"GLACIER", "DEEP_ARCHIVE"})
#: Restore tiers S3 offers; DEEP_ARCHIVE has no Expedited tier.
THAW_TIERS: tuple[str, ...] = ("Expedited", "Standard", "Bulk")
DEFAULT_STORAGE_CLASS = "STANDARD"


class StorageClassError(ValueError):
    """An unknown storage class or tier, or one the store cannot take (one line)."""


def check_storage_class(name: str) -> str:
    """`name` upper-cased if S3 knows it, else a one-line StorageClassError listing the classes."""
    value = name.strip().upper()
    if value not in STORAGE_CLASSES:
        raise StorageClassError(f"unknown storage class {name!r} (one of {', '.join(STORAGE_CLASSES)})")
    return value


def check_tier(name: str, storage_class: str | None = None) -> str:
    """The restore tier as S3 spells it; DEEP_ARCHIVE refuses Expedited."""
    by_lower = {tier.lower(): tier for tier in THAW_TIERS}
    tier = by_lower.get(name.strip().lower())
    if tier is None:
        raise StorageClassError(f"unknown thaw tier {name!r} (one of {', '.join(THAW_TIERS)})")
    if tier == "Expedited" and storage_class == "DEEP_ARCHIVE":
        raise StorageClassError("DEEP_ARCHIVE has no Expedited tier (use Standard or Bulk)")
    return tier


def is_cold(storage_class: str | None) -> bool:
    return (storage_class or DEFAULT_STORAGE_CLASS) in COLD_CLASSES


@dataclasses.dataclass(frozen=True)
class ThawState:
    """Where one object stands: "warm" (readable, no thaw needed), "frozen" (cold, no restore asked),
    "thawing" (restore in progress), "thawed" (a readable copy until `expires`), "missing"."""

    state: str
    storage_class: str | None
    expires: str | None = None

    @property
    def readable(self) -> bool:
        return self.state in ("warm", "thawed")


_EXPIRY = re.compile(r'expiry-date="([^"]+)"')


def thaw_state(head: dict[str, object]) -> ThawState:
    """The state from an S3 HEAD response (`StorageClass`, `Restore`: 'ongoing-request="false",
    expiry-date="…"')."""
    storage_class = str(head.get("StorageClass") or DEFAULT_STORAGE_CLASS)
    if storage_class not in COLD_CLASSES:
        return ThawState("warm", storage_class)
    restore = str(head.get("Restore") or "")
    if 'ongoing-request="true"' in restore:
        return ThawState("thawing", storage_class)
    if 'ongoing-request="false"' in restore:
        match = _EXPIRY.search(restore)
        return ThawState("thawed", storage_class, match.group(1) if match else None)
    return ThawState("frozen", storage_class)
