"""The cost figures (`costs.cost_report`) as rich tables and as HTML, for audit, compare and ls.

Every view starts with the prices it used and where each came from, so a default price is never
used silently.
"""

from __future__ import annotations

import html
from typing import Any

from rich.console import Console
from rich.table import Table

from pipeline.format.schema import COMPUTE_STAGES
from pipeline.store.storage_class import COLD_CLASSES as _COLD

DEFAULTS_HINT = "defaults: give --prices prices.toml or --gpu-hour/--cpu-hour/--storage-gb-month/--egress-gb"
CLASS_HINT = "S3 class figures: override with [storage_class.CLASS] in --prices; --storage-class CLASS prices another class"


def money(value: float | None, currency: str) -> str:
    if value is None:
        return "—"
    if value == 0:
        return f"0 {currency}"
    if abs(value) >= 100:
        return f"{value:,.0f} {currency}"
    return f"{value:.3g} {currency}" if abs(value) >= 0.01 else f"{value:.2e} {currency}"


def amount(value: float | None) -> str:
    """Months or downloads: readable at any magnitude."""
    if value is None:
        return "never"
    if value == 0:
        return "0 (at once)"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def size(n: float | None) -> str:
    """Bytes in binary units (prices count GB as 2^30 bytes)."""
    if n is None:
        return "—"
    value, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            break
        value /= 1024
    return f"{value:.0f} {unit}" if unit == "B" else f"{value:.3g} {unit}"


def hours(seconds: float | None) -> str:
    if not seconds:
        return "—"
    return f"{seconds / 3600:.3g} h" if seconds >= 36 else f"{seconds:.3g} s"


# ---- rows shared by the text and HTML views ---------------------------------------------------------
def price_rows(costs: dict[str, Any]) -> list[list[str]]:
    currency = costs["prices"]["currency"]
    rows = []
    for price in costs["prices"]["prices"]:
        source = price["source"] + (" (not given)" if price["source"] == "default" else "")
        rows.append([price["name"], f"{price['value']:g} {currency}", source])
    return rows


def class_price_rows(costs: dict[str, Any], classes: list[str]) -> list[list[str]]:
    """The figures of each S3 class in use (`class_prices`), one row each, with their source."""
    currency = costs["prices"]["currency"]
    table = costs["prices"].get("storage_classes", {})
    rows = []
    for name in classes:
        c = table.get(name)
        if c is None:
            continue
        v = {field: entry["value"] for field, entry in c.items()}
        minimum = f"{v['min_object_kb']:g} KB" if v["min_object_kb"] else "—"
        overhead = (
            f"{v['overhead_kb']:g}+{v['overhead_standard_kb']:g} KB"
            if v["overhead_kb"] or v["overhead_standard_kb"]
            else "—"
        )
        restore = f"{v['restore_per_1000']:g}" + (
            f" (Bulk {v['bulk_retrieval_gb']:g}/GB, {v['bulk_restore_per_1000']:g})" if name in _COLD else ""
        )
        sources = sorted({entry["source"] for entry in c.values()})
        rows.append(
            [name, f"{v['gb_month']:g} {currency}", f"{v['min_storage_days']:g} d", minimum, overhead,
             f"{v['put_per_1000']:g}", f"{v['get_per_1000']:g}", f"{v['retrieval_gb']:g}", restore,
             "; ".join(sources)]
        )  # fmt: skip
    return rows


def classes_in(costs: dict[str, Any]) -> list[str]:
    """The S3 classes a cost report priced objects in (an empty archive: the class it would use)."""
    storage = costs["total"].get("storage") or {}
    return list(storage.get("classes") or []) or [storage.get("storage_class", "STANDARD")]


def storage_rows(entries: list[tuple[str, dict[str, Any]]], currency: str) -> list[list[str]]:
    """Per group and class: objects, bytes stored and billed, per month, the minimum commitment, the
    one-time PUTs and one read-back of everything (cold classes: Standard tier, Bulk in brackets)."""
    rows = []
    for label, figures in entries:
        storage = figures.get("storage")
        if not storage:
            continue
        for name, c in storage["classes"].items():
            read = c["read_back"]
            read_text = money(read["standard"]["total"], currency)
            if "bulk" in read:
                read_text += f" (Bulk {money(read['bulk']['total'], currency)})"
            rows.append(
                [label, name, f"{c['objects']:,.4g}", size(c["stored_bytes"]),
                 size(c["billed_bytes"] + c["billed_standard_bytes"]), money(c["per_month"], currency),
                 f"{money(c['minimum_commitment'], currency)} ({c['min_storage_days']:g} d)",
                 money(c["write"], currency), read_text]
            )  # fmt: skip
    return rows


def compute_rows(entries: list[tuple[str, dict[str, Any]]], currency: str) -> list[list[str]]:
    """One row per group and device kind: device-time per stage, total, and its cost."""
    rows = []
    for label, figures in entries:
        for kind in sorted(figures["device_seconds_by_kind"]) or ["—"]:
            stages = [hours(figures["device_seconds"].get(stage, {}).get(kind)) for stage in COMPUTE_STAGES]
            total = figures["device_seconds_by_kind"].get(kind)
            cost = money(figures["cost_by_kind"].get(kind), currency)
            rows.append([label, kind, *stages, hours(total), cost])
    return rows


def reference_rows(entries: list[tuple[str, dict[str, Any]]], currency: str) -> list[list[str]]:
    rows = []
    for label, figures in entries:
        for ref in figures["references"]:
            ratio = ref["ratio"] or {}
            ci = ratio.get("ci_percent")
            status = ", ".join(f"{n} {s}" for s, n in sorted(ref["gops_by_status"].items()))
            rows.append(
                [
                    label,
                    ref["codec"],
                    ref["metric"],
                    f"{ref['gops_sampled']} ({status})",
                    "—" if ratio.get("smaller_percent") is None else f"{ratio['smaller_percent']:+.1f} %",
                    "—" if ci is None else f"{ci[0]:+.1f} … {ci[1]:+.1f} %",
                    money(ref["measurement_cost"], currency),
                ]
            )
    return rows


def break_even_rows(entries: list[tuple[str, dict[str, Any]]], currency: str) -> list[list[str]]:
    """Long format (readable in a narrow terminal): per group and comparison, one row per storage
    class (months) and one for downloads, each with the interval's ends when there is one."""
    rows = []
    for label, figures in entries:
        rows += _break_even_rows(label, "source", figures["vs_source"], currency)
        for ref in figures["references"]:
            if "vs_reference" in ref:
                against = f"{ref['codec']} at equal {ref['metric']}"
                rows += _break_even_rows(
                    label, against, ref["vs_reference"], currency, ref.get("vs_reference_ci")
                )
    return rows


def _break_even_rows(
    label: str, against: str, payback: dict[str, Any], currency: str, ci: dict[str, Any] | None = None
) -> list[list[str]]:
    head = [label, against, size(payback["bytes_saved"]), money(payback["extra_cost"], currency)]
    if payback["note"] and not payback["bytes_saved"] > 0:
        return [[*head, payback["note"], "", ""]]
    rows = []
    if "months_in_class" in payback:  # the archive's own class first: the break-even that applies
        months = payback["months_in_class"]
        ends = (ci or {}).get("months_in_class")
        rows.append(
            [*head, f"storage in {payback['storage_class']} "
            + ("(--storage-class)" if payback.get("class_assumed") else "(its class)"), f"{amount(months)} months",
             _range(ends, months)]
        )  # fmt: skip
        head = ["", "", "", ""]
    for name, months in payback["months"].items():
        ends = (ci or {}).get("months", {}).get(name)
        rows.append([*head, f"{name} storage", f"{amount(months)} months", _range(ends, months)])
        head = ["", "", "", ""]
    downloads = payback["downloads"]
    rows.append(
        [
            *head,
            "egress + retrieval",
            f"{amount(downloads)} downloads",
            _range((ci or {}).get("downloads"), downloads),
        ]
    )
    return rows


def _range(ends: list[float | None] | None, value: float | None) -> str:
    if not ends or value is None or value == 0:
        return ""
    if None in ends:
        return f"{amount(min(e for e in ends if e is not None))} … never"
    return f"{amount(min(ends))} … {amount(max(ends))}"


def _entries(costs: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    entries = list(costs["groups"].items())
    if len(entries) != 1:
        entries.append(("all", costs["total"]))
    return entries


def _headers() -> dict[str, list[str]]:
    return {
        "prices": ["price", "value", "source"],
        "classes": ["S3 class", "per GB-month", "minimum duration", "minimum object", "overhead per object",
                    "PUT /1,000", "GET /1,000", "retrieval /GB", "restore /1,000", "source"],
        "storage": ["codec / target", "class", "objects", "stored", "billed", "per month",
                    "minimum commitment", "write (PUTs)", "read back once"],
        "compute": ["codec / target", "device", *COMPUTE_STAGES, "total", "cost"],
        "reference": ["codec / target", "reference", "metric", "GOPs sampled", "archive smaller by", "95 % CI", "measurement cost"],
        "break_even": ["codec / target", "against", "saved", "extra compute", "paid back by", "after", "95 % CI"],
    }  # fmt: skip


# ---- rich --------------------------------------------------------------------------------------------
def _rich_table(title: str, headers: list[str], rows: list[list[str]], left: int = 1) -> Table:
    """A table of plain text: printed through `pipeline.text.text_console`, which parses no markup
    (names like "storage_gb_month[standard]" or a GPU's name stay text)."""
    table = Table(title=title)
    for i, name in enumerate(headers):
        table.add_column(name, justify="left" if i < left else "right")
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    return table


def print_prices(costs: dict[str, Any], console: Console, classes: list[str] | None = None) -> None:
    """The prices table, then the figures of the S3 classes in `classes` (those priced)."""
    title = "prices used (GB = 2^30 bytes)" + (f" — {DEFAULTS_HINT}" if costs["uses_default_prices"] else "")
    console.print(_rich_table(title, _headers()["prices"], price_rows(costs)))
    rows = class_price_rows(costs, classes or [])
    if rows:
        title = f"S3 storage classes priced (KB = 1024 bytes; {CLASS_HINT})"
        console.print(_rich_table(title, _headers()["classes"], rows))


def print_costs(costs: dict[str, Any], console: Console) -> None:
    """Prices, compute spent, the reference's statement and the break-even (audit's text view)."""
    currency = costs["prices"]["currency"]
    headers = _headers()
    entries = _entries(costs)
    print_prices(costs, console, classes_in(costs))
    console.print(
        _rich_table(
            "compute spent (device-time: wall × devices reserved)",
            headers["compute"],
            compute_rows(entries, currency),
            left=2,
        )
    )
    for label, figures in entries:
        if figures.get("note"):
            console.print(f"{label}: {figures['note']}")
    references = reference_rows(entries, currency)
    if references:
        console.print(
            _rich_table(
                "classic reference at equal quality (sampled GOPs)", headers["reference"], references, left=3
            )
        )
        for label, figures in entries:
            for ref in figures["references"]:
                console.print(f"{label}: {ref['statement']}", soft_wrap=True)
                if ref["ratio"]:
                    console.print(f"  ({ref['ratio']['method']})", soft_wrap=True)
                if ref["metric_note"]:
                    console.print(f"  metric: {ref['metric_note']}", soft_wrap=True)
    else:
        console.print(
            "reference: none sampled (archive with --reference x265 --reference-fraction F to add one)"
        )
    console.print(
        _rich_table(
            f"storage in its S3 class ({costs['total']['storage']['class_from']}; a month = 30 days)",
            headers["storage"],
            storage_rows(entries, currency),
            left=2,
        )
    )
    console.print(
        _rich_table(
            "break-even: when the bytes saved have paid for the compute ([…] = at the 95 % CI ends)",
            headers["break_even"],
            break_even_rows(entries, currency),
            left=2,
        )
    )


# ---- HTML --------------------------------------------------------------------------------------------
def _html_table(headers: list[str], rows: list[list[str]], left: int = 1) -> str:
    head = "".join(
        f'<th class="{"l" if i < left else ""}">{html.escape(h)}</th>' for i, h in enumerate(headers)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{"l" if i < left else ""}">{html.escape(str(v))}</td>' for i, v in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def costs_html(costs: dict[str, Any]) -> str:
    """The same figures as `print_costs`, as an HTML section."""
    currency = costs["prices"]["currency"]
    headers = _headers()
    entries = _entries(costs)
    parts = ["<h2>Cost and break-even</h2>"]
    hint = f" <b>{html.escape(DEFAULTS_HINT)}</b>" if costs["uses_default_prices"] else ""
    parts.append(f"<p>Prices used (GB = 2<sup>30</sup> bytes).{hint}</p>")
    parts.append(_html_table(headers["prices"], price_rows(costs)))
    parts.append(f"<p>{html.escape(CLASS_HINT)} (KB = 1024 bytes).</p>")
    parts.append(_html_table(headers["classes"], class_price_rows(costs, classes_in(costs))))
    parts.append("<h3>Compute spent</h3><p>Device-time per stage: wall seconds × devices reserved.</p>")
    parts.append(_html_table(headers["compute"], compute_rows(entries, currency), left=2))
    notes = [f"{label}: {f['note']}" for label, f in entries if f.get("note")]
    parts += [f'<p class="note">{html.escape(n)}</p>' for n in notes]
    references = reference_rows(entries, currency)
    parts.append("<h3>Classic reference at equal quality</h3>")
    if references:
        parts.append(_html_table(headers["reference"], references, left=3))
        for label, figures in entries:
            for ref in figures["references"]:
                parts.append(f"<p><b>{html.escape(label)}: {html.escape(ref['statement'])}</b>")
                if ref["ratio"]:
                    parts.append(f"<br><small>{html.escape(ref['ratio']['method'])}</small>")
                if ref["metric_note"]:
                    parts.append(f"<br><small>metric: {html.escape(ref['metric_note'])}</small>")
                parts.append("</p>")
    else:
        parts.append(
            "<p>none sampled (archive with <code>--reference x265 --reference-fraction F</code>)</p>"
        )
    parts.append(
        "<h3>Storage in its S3 class</h3><p>Per month with the class's minimum object size or per-object "
        "overhead, the minimum commitment (billed even if deleted at once), the PUTs of writing, and one "
        "read-back of everything (a month = 30 days).</p>"
    )
    parts.append(_html_table(headers["storage"], storage_rows(entries, currency), left=2))
    parts.append(
        "<h3>Break-even</h3><p>Months of storage per class, or downloads of the whole archive, "
        "after which the bytes saved have paid for the extra compute ([…] = at the 95 % CI ends).</p>"
    )
    parts.append(_html_table(headers["break_even"], break_even_rows(entries, currency), left=2))
    return "".join(parts)


# ---- compare ---------------------------------------------------------------------------------------
def _compare_entries(costs_a: dict[str, Any], costs_b: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{name}: {label}", figures)
        for name, costs in (("A", costs_a), ("B", costs_b))
        for label, figures in _entries(costs)
    ]


def print_compare_costs(
    costs_a: dict[str, Any], costs_b: dict[str, Any], b_vs_a: dict[str, Any] | None, console: Console
) -> None:
    """Both archives' compute, reference and break-even over the matched videos, and B against A."""
    currency = costs_a["prices"]["currency"]
    headers = _headers()
    entries = _compare_entries(costs_a, costs_b)
    print_prices(costs_a, console)
    console.print(
        _rich_table(
            "compute spent on the matched videos", headers["compute"], compute_rows(entries, currency), left=2
        )
    )
    references = reference_rows(entries, currency)
    if references:
        console.print(
            _rich_table("classic reference at equal quality", headers["reference"], references, left=3)
        )
    rows = break_even_rows(entries, currency)
    if b_vs_a is not None:
        rows += _break_even_rows("B", "A", b_vs_a, currency)
    console.print(
        _rich_table(
            "break-even ([…] = at the 95 % CI ends; B against A: codec compute only)",
            headers["break_even"],
            rows,
            left=2,
        )
    )


def compare_costs_html(
    costs_a: dict[str, Any], costs_b: dict[str, Any], b_vs_a: dict[str, Any] | None
) -> str:
    currency = costs_a["prices"]["currency"]
    headers = _headers()
    entries = _compare_entries(costs_a, costs_b)
    hint = f" <b>{html.escape(DEFAULTS_HINT)}</b>" if costs_a["uses_default_prices"] else ""
    parts = [
        "<h2>Cost and break-even (matched videos)</h2>",
        f"<p>Prices used (GB = 2<sup>30</sup> bytes).{hint}</p>",
    ]
    parts.append(_html_table(headers["prices"], price_rows(costs_a)))
    parts.append(_html_table(headers["compute"], compute_rows(entries, currency), left=2))
    references = reference_rows(entries, currency)
    if references:
        parts.append(_html_table(headers["reference"], references, left=3))
    rows = break_even_rows(entries, currency)
    if b_vs_a is not None:
        rows += _break_even_rows("B", "A", b_vs_a, currency)
    parts.append(_html_table(headers["break_even"], rows, left=2))
    return "".join(parts)


# ---- ls ----------------------------------------------------------------------------------------------
#: The cost columns of `vidarc ls` (after the video's key), in `ls_cells` order.
LS_COLUMNS = (
    "device time", "compute cost", "saved vs source", "vs reference at equal quality", "S3 class",
    "storage / month (minimum)", "write / read back",
)  # fmt: skip


def ls_cells(figures: dict[str, Any] | None, currency: str) -> list[str]:
    """`vidarc ls` columns for one video: device time by kind, compute cost, saved vs source, reference."""
    if figures is None:
        return ["—"] * len(LS_COLUMNS)
    time_text = ", ".join(
        f"{kind} {hours(s)}" for kind, s in sorted(figures["device_seconds_by_kind"].items())
    )
    references = []
    for ref in figures["references"]:
        ratio = ref["ratio"]
        if ratio is not None:
            references.append(f"{ratio['smaller_percent']:+.1f} % vs {ref['codec']} ({ratio['gops']} GOPs)")
    storage = figures["storage"]
    total = storage["total"]
    cells = [
        time_text or "—",
        money(figures["compute_cost"], currency),
        size(figures["vs_source"]["bytes_saved"]),
        "; ".join(references) or "—",
        storage["storage_class"],
        f"{money(total['per_month'], currency)} (min {money(total['minimum_commitment'], currency)})",
        f"{money(total['write'], currency)} / {money(total['read_back'], currency)}",
    ]
    return cells  # text: the ls table prints through `text_console` (no markup)
