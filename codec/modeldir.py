"""Model directories: weights plus a model card that names them and pins every file's sha256.

A model is a directory (diffusers layout where one exists, e.g. `tokenizer/config.json` +
`tokenizer/diffusion_pytorch_model.safetensors`) with `model_card.json` at its root:

    {"name": "vidarc-tiny", "version": "1", "kind": "glvc", "config": {...},
     "files": {"tokenizer/config.json": "<sha256>", ...}, "notes": "..."}

The model's identity in bitstreams is `model_id` ("name@version") and `model_sha256`: the sha256 of the
card's sorted file->hash table, so two directories with the same weights have the same identity and any
changed byte changes it. Weights load from safetensors only; a directory holding pickled weights is
refused rather than unpickled. Remote directories (any fsspec URL) are copied once into a local cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from codec.errors import ModelLoadError

CARD_NAME = "model_card.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
BUNDLED_MODELS_DIR = Path(__file__).resolve().parent / "models"


@dataclasses.dataclass(frozen=True)
class ModelDir:
    """A verified local model directory."""

    path: Path
    card: dict[str, Any]

    @property
    def model_id(self) -> str:
        return f"{self.card['name']}@{self.card['version']}"

    @property
    def sha256(self) -> str:
        return files_digest(self.card["files"])

    @property
    def config(self) -> dict[str, Any]:
        return self.card.get("config", {})

    def components_digest(self, names: list[str]) -> str:
        """Identity of just the components a codec uses (e.g. tokenizer + latent_codec), so adding an
        unrelated component to a bundle does not invalidate archives made with the others."""
        prefixes = tuple(f"{n}/" for n in names)
        picked = {k: v for k, v in self.card["files"].items() if k.startswith(prefixes)}
        if not picked:
            raise ModelLoadError(f"model {self.model_id} has none of the components {names}")
        return files_digest(picked)

    def component(self, name: str) -> Path:
        """Path of a sub-model folder (e.g. "tokenizer"); a clear error if the model lacks it."""
        sub = self.path / name
        if not sub.is_dir():
            raise ModelLoadError(f"model {self.model_id} at {self.path} has no '{name}' component")
        return sub


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def files_digest(files: dict[str, str]) -> str:
    canonical = json.dumps(dict(sorted(files.items())), separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()


def write_model_card(
    directory: str | os.PathLike[str],
    *,
    name: str,
    version: str,
    kind: str,
    config: dict[str, Any],
    notes: str = "",
    extra: dict[str, Any] | None = None,
) -> ModelDir:
    """Hash every file under `directory` and write the card beside them (the card is not hashed)."""
    root = Path(directory)
    _refuse_pickles(root, label=str(root))
    files = {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != CARD_NAME
    }
    card = {"name": name, "version": version, "kind": kind, "config": config, "files": files, "notes": notes}
    card.update(extra or {})
    tmp = root / (CARD_NAME + ".tmp")
    tmp.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    tmp.replace(root / CARD_NAME)
    return ModelDir(root, card)


def load_model_dir(uri: str | os.PathLike[str], *, cache_dir: str | None = None) -> ModelDir:
    """Open a model directory from a local path or fsspec URL and verify every listed file's hash."""
    uri = str(uri)
    local = _localise(uri, cache_dir)
    card_path = local / CARD_NAME
    if not card_path.is_file():
        raise ModelLoadError(f"model {uri}: no {CARD_NAME} (not a vidarc model directory)")
    try:
        card = json.loads(card_path.read_text())
        files = card["files"]
        card["name"], card["version"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"model {uri}: unreadable {CARD_NAME} ({exc})") from None
    _refuse_pickles(local, label=uri)
    for rel, expected in files.items():
        path = local / rel
        if not path.is_file():
            raise ModelLoadError(f"model {uri}: file {rel} listed in the model card is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise ModelLoadError(
                f"model {uri}: {rel} has sha256 {actual[:12]}…, the model card says {expected[:12]}…"
            )
    return ModelDir(local, card)


def bundled_model_path(name: str = "vidarc-tiny") -> Path:
    return BUNDLED_MODELS_DIR / name


def _refuse_pickles(root: Path, *, label: str) -> None:
    for path in root.rglob("*"):
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise ModelLoadError(
                f"model {label}: {path.relative_to(root)} is a pickled checkpoint; vidarc loads safetensors only"
            )


def _localise(uri: str, cache_dir: str | None) -> Path:
    """Local directories are used in place; remote ones are copied once into a content cache."""
    if "://" not in uri or uri.startswith("file://"):
        path = Path(uri.removeprefix("file://")).expanduser()
        if not path.is_dir():
            raise ModelLoadError(f"model {uri}: no such directory")
        return path
    import fsspec  # only remote models need it

    cache_root = Path(
        cache_dir or os.environ.get("VIDARC_MODEL_CACHE", "~/.cache/vidarc/models")
    ).expanduser()
    target = cache_root / hashlib.sha256(uri.encode()).hexdigest()[:24]
    if (target / CARD_NAME).is_file():
        return target
    cache_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=cache_root))
    try:
        fs, root = fsspec.core.url_to_fs(uri)
        if not fs.isdir(root):
            raise ModelLoadError(f"model {uri}: no such directory")
        fs.get(root.rstrip("/") + "/", str(staging), recursive=True)
        staging.replace(target)
    except ModelLoadError:
        raise
    except Exception as exc:  # network and permission errors from any fsspec backend
        raise ModelLoadError(f"model {uri}: cannot download ({type(exc).__name__}: {exc})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
