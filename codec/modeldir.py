"""Model directories: weights plus a model card that names them and pins every file's sha256.

A model is a directory in diffusers layout (e.g. `tokenizer/config.json` +
`tokenizer/diffusion_pytorch_model.safetensors`, or an official Wan2.1 pipeline folder with
`model_index.json`, `transformer/`, `vae/`, …). A *pinned* model has `model_card.json` at its root:

    {"name": "vidarc-tiny", "version": "1", "kind": "glvc", "config": {...},
     "files": {"tokenizer/config.json": "<sha256>", ...}, "notes": "..."}

`vidarc model pin DIR` writes that card for a stock directory. An *unpinned* stock directory (as
`hf download` or the Hugging Face cache leave it) loads too: its file table is computed from the files
themselves, so its identity is exactly what pinning would record.

Identity: `model_id` ("name@version") is a label; `model_sha256` — the sha256 of the sorted
file -> hash table, or of the part of it a codec uses (`components_digest`) — is what bitstreams check.
Two directories with the same weights have the same identity, and any changed byte changes it.

What is not the model: hidden paths (`.cache/huggingface/` bookkeeping of `hf download --local-dir`,
`.gitattributes`, our own `.vidarc/` caches) and download leftovers (`*.lock`, `*.metadata`,
`*.incomplete`). They are neither hashed nor required, so a later `hf download` cannot break a card.

Hashing reads every byte (tens of GB for a 14B model), so digests are cached on disk by file identity
(real path, size, mtime, ctime, inode — `HashCache`): a file that changed in any way is hashed again,
an unchanged one is not re-read. The cache is never a reason to skip a check. Weights load from
safetensors only; a directory holding pickled weights is refused rather than unpickled. Remote
directories (any fsspec URL) are copied once into a local cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from codec.errors import ModelLoadError

CARD_NAME = "model_card.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
#: Download leftovers of huggingface_hub (and partial files); never part of a model.
BOOKKEEPING_SUFFIXES = (".lock", ".metadata", ".incomplete")
BUNDLED_MODELS_DIR = Path(__file__).resolve().parent / "models"
#: Marks a remote model fully copied into the local cache (hidden, so never hashed).
_COMPLETE_MARKER = ".vidarc-complete"
UNPINNED_VERSION = "unpinned"


@dataclasses.dataclass(frozen=True)
class ModelDir:
    """A verified local model directory (pinned by its card, or hashed from its files)."""

    path: Path
    card: dict[str, Any]
    pinned: bool = True

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


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """A model directory found on disk but not yet hashed: enough to read its configs and refuse an
    unusable request (a mode it lacks, a missing component) before reading gigabytes of weights."""

    path: Path
    uri: str
    card: dict[str, Any] | None

    @property
    def label(self) -> str:
        if self.card is not None:
            return f"{self.card['name']}@{self.card['version']}"
        return f"{default_name(self.path, self.uri)}@{default_version(self.path)}"

    def verify(self, hashes: HashCache | None = None) -> ModelDir:
        """Hash the files: against the card when pinned, or to compute the identity when not."""
        hashes = hashes or HashCache()
        _refuse_pickles(self.path, label=self.uri)
        if self.card is None:
            files = {rel: hashes.digest(self.path / rel) for rel in model_files(self.path)}
            card = stock_card(self.path, files, name=default_name(self.path, self.uri))
            return ModelDir(self.path, card, pinned=False)
        for rel, expected in self.card["files"].items():
            path = self.path / rel
            if not path.is_file():
                raise ModelLoadError(f"model {self.uri}: file {rel} listed in the model card is missing")
            actual = hashes.digest(path)
            if actual != expected:
                raise ModelLoadError(
                    f"model {self.uri}: {rel} has sha256 {actual[:12]}…, the model card says {expected[:12]}…"
                )
        return ModelDir(self.path, self.card, pinned=True)


class HashCache:
    """sha256 of files, remembered on disk by (real path, size, mtime, ctime, inode).

    Any write to a file changes its mtime/ctime (a copy or replacement also its inode), so a cached
    digest is only reused for the very same bytes. One small file per entry, written atomically, so
    several processes (Ray actors loading the same model) share the cache without locks. Without a
    writable cache directory, every file is simply hashed.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        root = directory or os.environ.get("VIDARC_HASH_CACHE") or "~/.cache/vidarc/hashes"
        self.root = Path(root).expanduser()
        self.hashed: list[str] = []  # files actually read by this instance (for tests and `model info`)

    def _entry(self, path: Path) -> Path:
        real = os.path.realpath(path)
        st = os.stat(real)
        key = f"{real}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}"
        return self.root / hashlib.sha256(key.encode()).hexdigest()

    def digest(self, path: Path) -> str:
        entry = self._entry(path)
        try:
            cached = entry.read_text().strip()
            if re.fullmatch(r"[0-9a-f]{64}", cached):
                return cached
        except OSError:
            pass
        value = sha256_file(path)
        self.hashed.append(str(path))
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
            tmp.write_text(value + "\n")
            tmp.replace(entry)
        except OSError:
            pass  # a read-only home: correct, just slower next time
        return value


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def files_digest(files: dict[str, str]) -> str:
    canonical = json.dumps(dict(sorted(files.items())), separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()


def is_bookkeeping(rel: str) -> bool:
    """True for paths that belong to a downloader or to vidarc's caches, not to the model."""
    parts = rel.split("/")
    return any(p.startswith(".") for p in parts) or rel.endswith(BOOKKEEPING_SUFFIXES) or rel == CARD_NAME


def model_files(root: Path) -> list[str]:
    """Relative paths of the model's files (symlinks followed, as in a hub cache snapshot), sorted."""
    found = []
    for current, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        base = Path(current)
        for name in files:
            rel = (base / name).relative_to(root).as_posix()
            if not is_bookkeeping(rel) and (base / name).is_file():
                found.append(rel)
    return sorted(found)


def write_model_card(
    directory: str | os.PathLike[str],
    *,
    name: str,
    version: str,
    kind: str,
    config: dict[str, Any],
    notes: str = "",
    extra: dict[str, Any] | None = None,
    hashes: HashCache | None = None,
) -> ModelDir:
    """Hash every model file under `directory` and write the card beside them (the card is not hashed,
    nor are hidden bookkeeping files)."""
    root = Path(directory)
    _refuse_pickles(root, label=str(root))
    hashes = hashes or HashCache()
    files = {rel: hashes.digest(root / rel) for rel in model_files(root)}
    card = {"name": name, "version": version, "kind": kind, "config": config, "files": files, "notes": notes}
    card.update(extra or {})
    tmp = root / (CARD_NAME + ".tmp")
    tmp.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    tmp.replace(root / CARD_NAME)
    return ModelDir(root, card)


def pin_model_dir(
    directory: str | os.PathLike[str],
    *,
    name: str | None = None,
    version: str | None = None,
    hashes: HashCache | None = None,
) -> ModelDir:
    """Write a model card for a local directory as it is (a stock folder, a hub cache snapshot, or a
    model whose card should be renewed): every model file is hashed, bookkeeping files are not."""
    if "://" in str(directory) and not str(directory).startswith("file://"):
        raise ModelLoadError(f"model {directory}: pin a local directory (then upload it with its card)")
    root = Path(str(directory).removeprefix("file://")).expanduser()
    old = open_model_dir(str(root)).card or {}
    layout = stock_card(root, {}, name="")
    version = version or old.get("version") or default_version(root)
    return write_model_card(
        root,
        name=name or old.get("name") or default_name(root, str(root)),
        version="1" if version == UNPINNED_VERSION else version,
        kind=old.get("kind", layout["kind"]),
        config=old.get("config", layout["config"]),
        notes=old.get("notes") or f"pinned from the files of {root.name} by `vidarc model pin`",
        hashes=hashes,
    )


def stock_card(root: Path, files: dict[str, str], *, name: str) -> dict[str, Any]:
    """The card an unpinned directory is read as (what `pin` would write, with a placeholder version)."""
    kind, config = "bundle", {}
    index = root / "model_index.json"
    if index.is_file():
        try:
            pipeline = json.loads(index.read_text()).get("_class_name")
        except ValueError:
            raise ModelLoadError(f"model {root}: model_index.json is not valid JSON") from None
        kind, config = "diffusers-pipeline", {"pipeline": pipeline}
    elif (root / "config.json").is_file():
        kind = "diffusers-model"
    return {
        "name": name,
        "version": default_version(root),
        "kind": kind,
        "config": config,
        "files": files,
        "notes": "unpinned: identity computed from the files",
    }


def default_name(root: Path, uri: str) -> str:
    """A readable name: the hub repo id for a cache snapshot, else the directory's own name."""
    parts = Path(os.path.abspath(root)).parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3].removeprefix("models--").replace("--", "/")
    tail = uri.rstrip("/").rsplit("/", 1)[-1] if "://" in uri else root.name
    return tail or "model"


def default_version(root: Path) -> str:
    """The hub revision when the directory records one (cache snapshot name, or the commit in
    `hf download --local-dir` metadata), else "unpinned"."""
    parts = Path(os.path.abspath(root)).parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", parts[-1]):
        return parts[-1][:12]
    download = root / ".cache" / "huggingface" / "download"
    for meta in sorted(download.rglob("*.metadata")) if download.is_dir() else []:
        first = meta.read_text(errors="replace").splitlines()[:1]
        if first and re.fullmatch(r"[0-9a-f]{40}", first[0].strip()):
            return first[0].strip()[:12]
    return UNPINNED_VERSION


def open_model_dir(uri: str | os.PathLike[str], *, cache_dir: str | None = None) -> ModelSource:
    """Find a model directory (local path or fsspec URL) and read its card, without hashing."""
    uri = str(uri)
    local = _localise(uri, cache_dir)
    card_path = local / CARD_NAME
    if not card_path.is_file():
        if not _looks_like_model(local):
            raise ModelLoadError(
                f"model {uri}: not a model directory (no {CARD_NAME}, model_index.json or component configs)"
            )
        return ModelSource(local, uri, None)
    try:
        card = json.loads(card_path.read_text())
        if not isinstance(card["files"], dict):
            raise TypeError("files is not a table")
        card["name"], card["version"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"model {uri}: unreadable {CARD_NAME} ({exc})") from None
    return ModelSource(local, uri, card)


def load_model_dir(
    uri: str | os.PathLike[str], *, cache_dir: str | None = None, hashes: HashCache | None = None
) -> ModelDir:
    """Open a model directory from a local path or fsspec URL and verify (or compute) every file's hash."""
    return open_model_dir(uri, cache_dir=cache_dir).verify(hashes)


def bundled_model_path(name: str = "vidarc-tiny") -> Path:
    return BUNDLED_MODELS_DIR / name


def card_gop_frames(codec: str, model: str | None) -> int | None:
    """The GOP length a model's card declares for `codec` (`config.<codec>.gop_frames`: the clip length
    its networks were trained on), or None. Reads only the card's JSON, so the archive driver plans GOPs
    without loading a model; a remote or stock folder without such a card gives None."""
    root = Path(model) if model else bundled_model_path()
    try:
        value = json.loads((root / CARD_NAME).read_text())["config"][codec]["gop_frames"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return value if isinstance(value, int) and value > 0 else None


def _looks_like_model(root: Path) -> bool:
    if (root / "model_index.json").is_file() or (root / "config.json").is_file():
        return True
    return any((sub / "config.json").is_file() for sub in _subdirs(root))


def _subdirs(root: Path) -> Iterable[Path]:
    return (p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _refuse_pickles(root: Path, *, label: str) -> None:
    for rel in model_files(root):
        if Path(rel).suffix.lower() in PICKLE_SUFFIXES:
            raise ModelLoadError(
                f"model {label}: {rel} is a pickled checkpoint; vidarc loads safetensors only"
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
    if (target / _COMPLETE_MARKER).is_file() or (target / CARD_NAME).is_file():
        return target
    cache_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=cache_root))
    try:
        fs, root = fsspec.core.url_to_fs(uri)
        if not fs.isdir(root):
            raise ModelLoadError(f"model {uri}: no such directory")
        fs.get(root.rstrip("/") + "/", str(staging), recursive=True)
        (staging / _COMPLETE_MARKER).write_text(uri + "\n")
        shutil.rmtree(target, ignore_errors=True)
        staging.replace(target)
    except ModelLoadError:
        raise
    except Exception as exc:  # network and permission errors from any fsspec backend
        raise ModelLoadError(f"model {uri}: cannot download ({type(exc).__name__}: {exc})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
