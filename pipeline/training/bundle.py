"""Keep a model bundle's card true after a training stage replaces one of its components."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from codec.modeldir import CARD_NAME, ModelDir, write_model_card

CARD_FIELDS = {"name", "version", "kind", "config", "files", "notes"}


def update_bundle_card(
    root: str | Path,
    section: str,
    summary: dict[str, Any],
    note: str,
    *,
    name: str = "vidarc-tiny",
    version: str = "1",
    extra_config: dict[str, Any] | None = None,
) -> ModelDir:
    """Re-hash every file of the bundle, recording `summary` under config[section] and replacing the
    notes line that starts with "<section>/:" — the other components' entries are kept as they are."""
    root = Path(root)
    card = json.loads((root / CARD_NAME).read_text()) if (root / CARD_NAME).is_file() else {}
    config = dict(card.get("config", {}))
    config[section] = summary
    config.update(extra_config or {})
    prefix = f"{section}/:"
    kept = [line for line in card.get("notes", "").splitlines() if line and not line.startswith(prefix)]
    extra = {k: v for k, v in card.items() if k not in CARD_FIELDS}
    return write_model_card(
        root,
        name=card.get("name", name),
        version=card.get("version", version),
        kind=card.get("kind", "bundle"),
        config=config,
        notes="\n".join([*kept, f"{prefix} {note}"]),
        extra=extra,
    )


def describe_source(path: str | None) -> str | None:
    """How a model card names a component a run started from: `name@version/component (sha256 …)`
    when it belongs to a bundle with a card, so the record means the same on every machine (a scratch
    path does not); else the path as given."""
    if path is None:
        return None
    component = Path(path).resolve()
    card_path = component.parent / CARD_NAME
    try:
        card = json.loads(card_path.read_text())
    except (OSError, ValueError):
        return path
    name, version = card.get("name"), card.get("version")
    if not name:
        return path
    files = card.get("files", {})
    weights = sorted(
        digest
        for rel, digest in files.items()
        if rel.startswith(f"{component.name}/") and rel.endswith(".safetensors")
    )
    label = f"{name}@{version}/{component.name}" if version else f"{name}/{component.name}"
    return f"{label} (sha256 {weights[0][:12]})" if len(weights) == 1 else label
