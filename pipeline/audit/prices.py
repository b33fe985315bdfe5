"""Prices for the break-even: compute per device-hour, storage per GB-month per class, egress per GB.

Prices come from three layers, key by key: the documented defaults below, then a TOML file
(`--prices prices.toml`), then flags (`--gpu-hour`, `--cpu-hour`, `--storage-gb-month CLASS=PRICE`,
`--egress-gb`). Every price keeps the layer it came from, and every report prints the table with that
source, so a default is never used silently. A file that lists `[storage_gb_month]` replaces the
default storage classes (a user listing their classes wants exactly those); flags add or override
single classes.

```toml
currency = "USD"
gpu_hour = 2.5            # per GPU-hour, any GPU model not listed below
cpu_hour = 0.04           # per CPU-hour (one vCPU/core reserved for an hour)
egress_gb = 0.09          # per GB downloaded
[gpu_hour_by_model]       # by the model name the driver reports (the manifest's compute_device)
"NVIDIA H100 80GB HBM3" = 3.0
[storage_gb_month]        # per GB stored for a month, by storage class
standard = 0.023
deep_archive = 0.00099
```

GB means 2^30 bytes, as cloud price lists count it.

Defaults (`DEFAULTS`), public on-demand list prices in USD, for orientation only:
- `gpu_hour` 3.00: an H100-class GPU-hour at GPU clouds (hyperscalers list more);
- `cpu_hour` 0.045: one vCPU-hour of a compute-optimised instance (e.g. c7i: 0.0893 per 2 vCPU-hours);
- `storage_gb_month`: object storage, first-tier list prices: standard 0.023, infrequent_access
  0.0125, archive_instant 0.004, deep_archive 0.00099 (what-if rows: minimum durations, object
  minimums and request fees are priced per S3 class, `class_prices.py`);
- `egress_gb` 0.09: internet egress, first tier.

The S3 storage classes (`class_prices.py`) carry more than a rate: minimum storage duration, minimum
billable object size or per-object overhead, request fees and retrieval. Their defaults are AWS's us-east-1
list prices; a `[storage_class.CLASS]` table in the file overrides any of their fields (class names as S3
spells them, any case). The archive's own class (each row's `storage_class`, STANDARD where it is null, or
the one `--storage-class` assumes: `assumed_class`) prices its storage, writes and reads and its
break-even; the `storage_gb_month` entries above stay what-if rows beside it.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from pipeline.audit.class_prices import (
    CLASS_FIELDS,
    CLASS_PRICES_SOURCE,
    ClassPrices,
    default_class_prices,
    override,
)
from pipeline.store.storage_class import StorageClassError, check_storage_class

try:  # Python 3.11+
    import tomllib as _toml
except ModuleNotFoundError:  # Python 3.10: the tomli backport (a dependency there)
    try:
        import tomli as _toml  # type: ignore[no-redef]
    except ModuleNotFoundError:
        _toml = None  # type: ignore[assignment]

BYTES_PER_GB = float(2**30)
DEFAULT_SOURCE = "default"
FLAG_SOURCE = "flag"
_CLASS_DEFAULT_SOURCE = f"{DEFAULT_SOURCE}: {CLASS_PRICES_SOURCE}"

DEFAULTS: dict[str, Any] = {
    "currency": "USD",
    "gpu_hour": 3.00,
    "cpu_hour": 0.045,
    "egress_gb": 0.09,
    "gpu_hour_by_model": {},
    "storage_gb_month": {  # what-if rows of the break-even (the S3 classes' own rates: class_prices.py)
        "standard": 0.023,
        "infrequent_access": 0.0125,
        "archive_instant": 0.004,
        "deep_archive": 0.00099,
    },
}
_SCALARS = ("gpu_hour", "cpu_hour", "egress_gb")
_TABLES = ("gpu_hour_by_model", "storage_gb_month")
CLASS_TABLE = "storage_class"


class PricesError(ValueError):
    """Prices cannot be read or make no sense: one line naming the file or flag."""


@dataclasses.dataclass(frozen=True)
class Price:
    value: float
    source: str  # "default", the file's path, or "flag"


@dataclasses.dataclass(frozen=True)
class Prices:
    currency: str
    gpu_hour: Price
    cpu_hour: Price
    egress_gb: Price
    gpu_hour_by_model: dict[str, Price]
    storage_gb_month: dict[str, Price]
    #: Every S3 class's figures (`class_prices.ClassPrices`), by the name S3 gives it.
    storage_classes: dict[str, ClassPrices] = dataclasses.field(
        default_factory=lambda: default_class_prices(_CLASS_DEFAULT_SOURCE)
    )
    #: `--storage-class`: price every object in this class instead of the class its rows record.
    assumed_class: str | None = None

    def device_hour(self, kind: str) -> Price:
        """The price of one hour of device `kind` ("cpu", or a GPU model name)."""
        if kind == "cpu":
            return self.cpu_hour
        return self.gpu_hour_by_model.get(kind, self.gpu_hour)

    def storage_class(self, recorded: str | None) -> ClassPrices:
        """The class an object is priced in: the assumed one, else the recorded one, else STANDARD
        (a local folder, or an archive written before the column)."""
        name = self.assumed_class or recorded or "STANDARD"
        return self.storage_classes.get(name.upper(), self.storage_classes["STANDARD"])

    def uses_defaults(self) -> bool:
        return any(p.source == DEFAULT_SOURCE for _, p in self.items())

    def items(self) -> list[tuple[str, Price]]:
        """(name, price) for every price, in report order."""
        rows = [("gpu_hour", self.gpu_hour)]
        rows += [(f"gpu_hour[{model}]", p) for model, p in sorted(self.gpu_hour_by_model.items())]
        rows += [("cpu_hour", self.cpu_hour), ("egress_gb", self.egress_gb)]
        rows += [(f"storage_gb_month[{name}]", p) for name, p in self.storage_gb_month.items()]
        return rows

    def to_json(self) -> dict[str, Any]:
        return {
            "currency": self.currency,
            "gb": "2^30 bytes",
            "prices": [{"name": n, "value": p.value, "source": p.source} for n, p in self.items()],
            "assumed_storage_class": self.assumed_class,
            "storage_classes": {name: c.to_json() for name, c in self.storage_classes.items()},
        }


def load_prices(
    path: str | Path | None = None,
    *,
    gpu_hour: float | None = None,
    cpu_hour: float | None = None,
    egress_gb: float | None = None,
    storage: list[str] | dict[str, float] | None = None,
    storage_class: str | None = None,
) -> Prices:
    """Defaults, then the TOML file at `path`, then the flags; raises PricesError (one line).
    `storage_class`: price every object in this S3 class (`--storage-class`)."""
    layers: dict[str, Any] = {k: Price(v, DEFAULT_SOURCE) for k, v in DEFAULTS.items() if k in _SCALARS}
    tables = {t: {k: Price(v, DEFAULT_SOURCE) for k, v in DEFAULTS[t].items()} for t in _TABLES}
    currency = DEFAULTS["currency"]
    classes = default_class_prices(_CLASS_DEFAULT_SOURCE)
    assumed = None
    if storage_class is not None:
        try:
            assumed = check_storage_class(storage_class)
        except StorageClassError as exc:
            raise PricesError(f"--storage-class: {exc}") from None
    if path is not None:
        data = _read_toml(Path(path))
        source = str(path)
        unknown = set(data) - {"currency", *_SCALARS, *_TABLES, CLASS_TABLE}
        if unknown:
            raise PricesError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; known: "
                              f"currency, {', '.join((*_SCALARS, *_TABLES, CLASS_TABLE))}")  # fmt: skip
        if CLASS_TABLE in data:
            classes = _class_tables(data[CLASS_TABLE], classes, source)
        if "currency" in data:
            if not isinstance(data["currency"], str) or not data["currency"].strip():
                raise PricesError(f'{path}: currency must be a name such as "USD"')
            currency = data["currency"].strip()
        for key in _SCALARS:
            if key in data:
                layers[key] = Price(_number(data[key], f"{path}: {key}"), source)
        for table in _TABLES:
            if table in data:
                if not isinstance(data[table], dict):
                    raise PricesError(f"{path}: {table} must be a table ([{table}]) of name = price")
                tables[table] = {
                    str(k): Price(_number(v, f"{path}: {table}.{k}"), source) for k, v in data[table].items()
                }
    for key, value in (("gpu_hour", gpu_hour), ("cpu_hour", cpu_hour), ("egress_gb", egress_gb)):
        if value is not None:
            layers[key] = Price(_number(value, f"--{key.replace('_', '-')}"), FLAG_SOURCE)
    for name, value in _storage_flags(storage).items():
        tables["storage_gb_month"][name] = Price(value, FLAG_SOURCE)
    if not tables["storage_gb_month"]:
        raise PricesError("no storage class priced: give [storage_gb_month] entries or --storage-gb-month")
    return Prices(currency=currency, **layers, **tables, storage_classes=classes, assumed_class=assumed)


def _class_tables(data: Any, classes: dict[str, ClassPrices], source: str) -> dict[str, ClassPrices]:
    """`[storage_class.CLASS]` tables over the defaults: known classes and fields only, each a price."""
    if not isinstance(data, dict):
        raise PricesError(f"{source}: storage_class must hold tables, e.g. [storage_class.DEEP_ARCHIVE]")
    result = dict(classes)
    for name, fields in data.items():
        try:
            known = check_storage_class(str(name))
        except StorageClassError as exc:
            raise PricesError(f"{source}: storage_class.{name}: {exc}") from None
        if not isinstance(fields, dict):
            raise PricesError(f"{source}: storage_class.{name} must be a table of field = value")
        unknown = set(fields) - set(CLASS_FIELDS)
        if unknown:
            raise PricesError(
                f"{source}: storage_class.{name}: unknown field(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(CLASS_FIELDS)}"
            )
        values = {k: _number(v, f"{source}: storage_class.{name}.{k}") for k, v in fields.items()}
        result[known] = override(result[known], values, source)
    return result


def _read_toml(path: Path) -> dict[str, Any]:
    if _toml is None:
        raise PricesError(
            f"{path}: reading TOML needs Python 3.11+ or the tomli package (pip install tomli); "
            "or give the prices as flags"
        )
    try:
        with path.open("rb") as handle:
            return _toml.load(handle)
    except FileNotFoundError:
        raise PricesError(f"{path}: no such prices file") from None
    except OSError as exc:
        raise PricesError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except _toml.TOMLDecodeError as exc:
        raise PricesError(f"{path}: not valid TOML ({exc})") from None


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(float(value)):
        raise PricesError(f"{where}: a price must be a finite number, got {value!r}")
    if value < 0:
        raise PricesError(f"{where}: a price cannot be negative, got {value!r}")
    return float(value)


def _storage_flags(storage: list[str] | dict[str, float] | None) -> dict[str, float]:
    if not storage:
        return {}
    if isinstance(storage, dict):
        return {str(k): _number(v, f"--storage-gb-month {k}") for k, v in storage.items()}
    parsed: dict[str, float] = {}
    for item in storage:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise PricesError(f"--storage-gb-month {item!r}: expected CLASS=PRICE, e.g. standard=0.023")
        try:
            number = float(value)
        except ValueError:
            raise PricesError(f"--storage-gb-month {item!r}: {value!r} is not a number") from None
        parsed[name.strip()] = _number(number, f"--storage-gb-month {name.strip()}")
    return parsed
