"""What an S3 storage class charges besides its GB-month: minimums, request fees and retrieval.

A colder class stores for less and charges in other ways: a minimum storage duration (an object deleted
or moved earlier is billed for the rest of it), a minimum billable object size or a per-object overhead,
dearer writes, and fees to read back (retrieval per GB, restore and GET requests per object). These
decide whether DEEP_ARCHIVE really makes an archive cheaper, and how much harder it makes paying back
the compute of a neural codec, so the audit and `ls` price each of them (`class_costs.py`).

Defaults: AWS S3 list prices for us-east-1 (first storage tier), from the Amazon S3 pricing page
(https://aws.amazon.com/s3/pricing/) and the S3 user guide's storage-class table, as published in 2026.
They are defaults to override (`[storage_class.CLASS]` tables in `--prices prices.toml`), not a quote:
other regions, tiers past 50 TB, negotiated discounts and S3-compatible stores differ. KB is 1024 bytes.

```toml
[storage_class.DEEP_ARCHIVE]
gb_month = 0.00099            # per GB stored for a month
min_storage_days = 180        # billed for at least this long
min_object_kb = 0             # smaller objects are billed as this size
overhead_kb = 32              # per object, billed at this class's rate
overhead_standard_kb = 8      # per object, billed at STANDARD's rate
put_per_1000 = 0.05           # PUT, COPY, POST, LIST
get_per_1000 = 0.0004         # GET, SELECT
retrieval_gb = 0.02           # per GB read back (the Standard restore tier for cold classes)
restore_per_1000 = 0.10       # restore requests, Standard tier (cold classes only)
bulk_retrieval_gb = 0.0025    # the Bulk restore tier (cold classes only)
bulk_restore_per_1000 = 0.025
```
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pipeline.store.storage_class import COLD_CLASSES, STORAGE_CLASSES

#: Where the defaults come from, printed beside every default class price.
CLASS_PRICES_SOURCE = "AWS S3 pricing page, us-east-1, as published in 2026"

#: The fields of a class, in report order, with their units (the JSON carries these).
CLASS_FIELDS: dict[str, str] = {
    "gb_month": "per GB-month",
    "min_storage_days": "days",
    "min_object_kb": "KB (1024 bytes)",
    "overhead_kb": "KB per object, at the class's rate",
    "overhead_standard_kb": "KB per object, at STANDARD's rate",
    "put_per_1000": "per 1,000 PUT/COPY/POST/LIST requests",
    "get_per_1000": "per 1,000 GET/SELECT requests",
    "retrieval_gb": "per GB retrieved (cold classes: the Standard restore tier)",
    "restore_per_1000": "per 1,000 restore requests, Standard tier",
    "bulk_retrieval_gb": "per GB retrieved, Bulk restore tier",
    "bulk_restore_per_1000": "per 1,000 restore requests, Bulk tier",
}
#: Fields that are amounts of money (the others are durations and sizes).
MONEY_FIELDS = frozenset(CLASS_FIELDS) - {
    "min_storage_days",
    "min_object_kb",
    "overhead_kb",
    "overhead_standard_kb",
}

_ZERO = dict.fromkeys(CLASS_FIELDS, 0.0)
DEFAULT_CLASS_PRICES: dict[str, dict[str, float]] = {
    "STANDARD": {**_ZERO, "gb_month": 0.023, "put_per_1000": 0.005, "get_per_1000": 0.0004},
    "STANDARD_IA": {
        **_ZERO, "gb_month": 0.0125, "min_storage_days": 30, "min_object_kb": 128,
        "put_per_1000": 0.01, "get_per_1000": 0.001, "retrieval_gb": 0.01,
    },
    "GLACIER_IR": {
        **_ZERO, "gb_month": 0.004, "min_storage_days": 90, "min_object_kb": 128,
        "put_per_1000": 0.02, "get_per_1000": 0.01, "retrieval_gb": 0.03,
    },
    "GLACIER": {  # Flexible Retrieval; Bulk restores are free
        **_ZERO, "gb_month": 0.0036, "min_storage_days": 90, "overhead_kb": 32, "overhead_standard_kb": 8,
        "put_per_1000": 0.03, "get_per_1000": 0.0004, "retrieval_gb": 0.01, "restore_per_1000": 0.05,
        "bulk_retrieval_gb": 0.0, "bulk_restore_per_1000": 0.0,
    },
    "DEEP_ARCHIVE": {
        **_ZERO, "gb_month": 0.00099, "min_storage_days": 180, "overhead_kb": 32, "overhead_standard_kb": 8,
        "put_per_1000": 0.05, "get_per_1000": 0.0004, "retrieval_gb": 0.02, "restore_per_1000": 0.10,
        "bulk_retrieval_gb": 0.0025, "bulk_restore_per_1000": 0.025,
    },
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ClassPrices:
    """One storage class's figures (`CLASS_FIELDS`), each with the layer it came from."""

    name: str
    values: dict[str, float]
    sources: dict[str, str]

    def __getitem__(self, field: str) -> float:
        return self.values[field]

    @property
    def cold(self) -> bool:
        """Needs a restore request before a GET (GLACIER, DEEP_ARCHIVE)."""
        return self.name in COLD_CLASSES

    def to_json(self) -> dict[str, Any]:
        return {
            field: {"value": self.values[field], "unit": unit, "source": self.sources[field]}
            for field, unit in CLASS_FIELDS.items()
        }


def default_class_prices(source: str) -> dict[str, ClassPrices]:
    """Every S3 class at its default figures, each marked with `source`."""
    return {
        name: ClassPrices(name, dict(DEFAULT_CLASS_PRICES[name]), dict.fromkeys(CLASS_FIELDS, source))
        for name in STORAGE_CLASSES
    }


def override(base: ClassPrices, values: dict[str, float], source: str) -> ClassPrices:
    """`base` with the given fields replaced (already checked: known fields, finite, not negative)."""
    return ClassPrices(
        base.name, {**base.values, **values}, {**base.sources, **dict.fromkeys(values, source)}
    )
