"""What an archive's objects cost in their S3 storage class: per month, at least, to write, to read back.

The GB-month rate alone flatters the cold classes. Per object (a pack is one object, however many
videos it holds) a class may bill a minimum size (STANDARD_IA, GLACIER_IR: 128 KB) or an overhead
(GLACIER, DEEP_ARCHIVE: 32 KB at its rate + 8 KB at STANDARD's), a minimum storage duration (an object
deleted or moved earlier is billed for the rest: the *minimum commitment*), dearer PUTs, and fees to
read the archive back (retrieval per GB, and per object a GET, after a restore request for the cold
classes). Definitions, so each figure can be checked by hand (GB = 2^30 bytes, KB = 1024 bytes, a month
= 30 days):

- billed at the class's rate, per object: max(size, min_object_kb) + overhead_kb; at STANDARD's rate:
  overhead_standard_kb;
- per month = billed GB × gb_month + overhead GB × STANDARD's gb_month;
- minimum commitment = per month × min_storage_days / 30 (0 for STANDARD);
- write = objects / 1000 × put_per_1000 (one PUT per object; a multipart upload adds a request per part);
- read back once = stored GB × retrieval_gb + objects / 1000 × (get_per_1000 + restore_per_1000), for
  the cold classes also at the Bulk tier; in-region, so no egress (the break-even's downloads add it).

An object only partly in scope (a pack of which a filter or `ls` keeps some members) is charged its
share: the members' bytes over the object's, of every per-object figure.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.audit.class_prices import ClassPrices
from pipeline.audit.prices import BYTES_PER_GB, Prices

KB = 1024.0
MONTH_DAYS = 30.0

UNITS = {
    "objects": "objects (a pack counts once; a share where only some members are in scope)",
    "stored_bytes": "bytes",
    "billed_bytes": "bytes billed at the class's rate (minimum size and overhead applied)",
    "billed_standard_bytes": "bytes billed at STANDARD's rate (per-object overhead)",
    "per_month": "currency per month",
    "min_storage_days": "days",
    "minimum_commitment": "currency: the storage billed even if the objects are deleted at once",
    "write": "currency, once: one PUT per object",
    "read_back": "currency, once: retrieval per GB + GET (and restore) requests per object",
    "gb_month_rate": "currency per GB-month: byte-weighted over the classes (the break-even's rate)",
}


def storage_costs(objects: Iterable[tuple[str | None, float, float]], prices: Prices) -> dict[str, Any]:
    """`objects`: (recorded class, bytes in scope, the whole object's bytes) per object. Per class and
    in total: the figures of the module docstring, with the rate the break-even uses."""
    scoped: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
    for recorded, size, whole in objects:
        name = prices.storage_class(recorded).name
        share = size / whole if whole > 0 else 1.0
        c = prices.storage_classes[name]
        acc = scoped[name]
        acc[0] += share
        acc[1] += size
        acc[2] += share * (max(whole, c["min_object_kb"] * KB) + c["overhead_kb"] * KB)
        acc[3] += share * c["overhead_standard_kb"] * KB
    return _class_figures(scoped, prices)


def storage_costs_of(
    recorded: pa.Array | pa.ChunkedArray, size: np.ndarray, whole: np.ndarray, prices: Prices
) -> dict[str, Any]:
    """`storage_costs` of objects given as columns (a million objects are no Python loop), with the
    same figures to the last bit: each class's sums are added object by object in the same order,
    a block of objects at a time (bounded temporaries)."""
    codes, names = _class_codes(recorded, prices)
    sums = np.zeros((len(names), 4))
    for start in range(0, len(codes), _BLOCK):
        block = slice(start, start + _BLOCK)
        for code in np.unique(codes[block]):
            mine = codes[block] == code
            _add_in_order(
                sums[code], prices.storage_classes[names[code]], size[block][mine], whole[block][mine]
            )
    return _class_figures({name: [float(v) for v in sums[code]] for code, name in enumerate(names)}, prices)


_BLOCK = 1 << 16


def _add_in_order(sums: np.ndarray, c: ClassPrices, size: np.ndarray, whole: np.ndarray) -> None:
    """Add the objects' share, bytes, billed bytes and bytes billed at STANDARD to `sums` one object
    after the other, as `storage_costs` does (cumsum is sequential; `np.sum` would pair terms)."""
    share = np.divide(size, whole, out=np.ones_like(size), where=whole > 0)
    billed = share * (np.maximum(whole, c["min_object_kb"] * KB) + c["overhead_kb"] * KB)
    standard = share * c["overhead_standard_kb"] * KB
    for i, column in enumerate((share, size, billed, standard)):
        sums[i] = np.cumsum(np.concatenate(([sums[i]], column)))[-1]


def _class_codes(recorded: pa.Array | pa.ChunkedArray, prices: Prices) -> tuple[np.ndarray, list[str]]:
    """Each object's priced class as an index into the sorted class names (few distinct recorded values;
    null and "" are both "none recorded")."""
    if len(recorded) and recorded.null_count == len(recorded):
        return np.zeros(len(recorded), dtype=np.int64), [prices.storage_class(None).name]
    if isinstance(recorded, pa.ChunkedArray):
        recorded = recorded.combine_chunks()
    encoded = pc.dictionary_encode(pc.fill_null(recorded, ""))
    priced = [prices.storage_class(value or None).name for value in encoded.dictionary.to_pylist()]
    names = sorted(set(priced))
    lookup = np.array([names.index(name) for name in priced], dtype=np.int64)
    return lookup[encoded.indices.to_numpy(zero_copy_only=False)], names


def _class_figures(scoped: dict[str, list[float]], prices: Prices) -> dict[str, Any]:
    """Per class and in total, from each class's (objects, stored, billed, billed at STANDARD) sums."""
    standard_rate = prices.storage_classes["STANDARD"]["gb_month"]
    classes: dict[str, dict[str, Any]] = {}
    for name, (count, stored, billed, billed_standard) in sorted(scoped.items()):
        c = prices.storage_classes[name]
        per_month = billed / BYTES_PER_GB * c["gb_month"] + billed_standard / BYTES_PER_GB * standard_rate
        read_back = {
            "standard": _read_back(count, stored, c["retrieval_gb"], c["get_per_1000"], c["restore_per_1000"])
        }
        if c.cold:
            read_back["bulk"] = _read_back(
                count, stored, c["bulk_retrieval_gb"], c["get_per_1000"], c["bulk_restore_per_1000"]
            )
        classes[name] = {
            "objects": count,
            "stored_bytes": stored,
            "billed_bytes": billed,
            "billed_standard_bytes": billed_standard,
            "gb_month": c["gb_month"],
            "per_month": per_month,
            "min_storage_days": c["min_storage_days"],
            "minimum_commitment": per_month * c["min_storage_days"] / MONTH_DAYS,
            "write": count / 1000.0 * c["put_per_1000"],
            "read_back": read_back,
        }
    stored_total = sum(v["stored_bytes"] for v in classes.values())
    total = {
        "objects": sum(v["objects"] for v in classes.values()),
        "stored_bytes": stored_total,
        "per_month": sum(v["per_month"] for v in classes.values()),
        "minimum_commitment": sum(v["minimum_commitment"] for v in classes.values()),
        "write": sum(v["write"] for v in classes.values()),
        "read_back": sum(v["read_back"]["standard"]["total"] for v in classes.values()),
        "read_back_cheapest_tier": sum(
            min(tier["total"] for tier in v["read_back"].values()) for v in classes.values()
        ),
    }
    return {
        "storage_class": "+".join(classes) or prices.storage_class(None).name,
        "class_from": "--storage-class"
        if prices.assumed_class
        else "each object's recorded class, STANDARD where none",
        "classes": classes,
        "total": total,
        "gb_month_rate": _weighted(classes, stored_total, prices, "gb_month"),
        "retrieval_gb_rate": _weighted(classes, stored_total, prices, "retrieval_gb"),
        "month_days": MONTH_DAYS,
        "units": UNITS,
    }


def _read_back(objects: float, stored: float, per_gb: float, get: float, restore: float) -> dict[str, float]:
    retrieval = stored / BYTES_PER_GB * per_gb
    requests = objects / 1000.0 * (get + restore)
    return {"retrieval": retrieval, "requests": requests, "total": retrieval + requests}


def _weighted(classes: dict[str, dict[str, Any]], stored: float, prices: Prices, field: str) -> float:
    """A class figure weighted by the bytes stored in each class (the only class's, if one)."""
    if not classes:
        return prices.storage_class(None)[field]
    if len(classes) == 1:
        return prices.storage_classes[next(iter(classes))][field]
    if stored <= 0:
        return sum(prices.storage_classes[n][field] for n in classes) / len(classes)
    return sum(v["stored_bytes"] * prices.storage_classes[n][field] for n, v in classes.items()) / stored
