"""Model directories: hashed model cards, safetensors only, component identities, fsspec loading."""

from __future__ import annotations

from pathlib import Path

import pytest

from codec.errors import ModelLoadError
from codec.modeldir import files_digest, load_model_dir, write_model_card


def _model(root: Path) -> Path:
    (root / "tokenizer").mkdir(parents=True)
    (root / "latent_codec").mkdir()
    (root / "tokenizer" / "config.json").write_text('{"z_dim": 16}\n')
    (root / "tokenizer" / "weights.safetensors").write_bytes(b"tok" * 10)
    (root / "latent_codec" / "model.safetensors").write_bytes(b"lc" * 10)
    write_model_card(root, name="m", version="3", kind="bundle", config={"a": 1})
    return root


def test_card_pins_every_file_and_identity(tmp_path: Path) -> None:
    model = load_model_dir(_model(tmp_path / "m"))
    assert model.model_id == "m@3"
    assert set(model.card["files"]) == {
        "tokenizer/config.json",
        "tokenizer/weights.safetensors",
        "latent_codec/model.safetensors",
    }
    assert model.sha256 == files_digest(model.card["files"])
    assert model.components_digest(["tokenizer"]) != model.components_digest(["tokenizer", "latent_codec"])
    assert model.component("tokenizer").is_dir()
    with pytest.raises(ModelLoadError, match="no 'flow' component"):
        model.component("flow")
    with pytest.raises(ModelLoadError, match="none of the components"):
        model.components_digest(["flow"])


def test_changed_byte_is_refused(tmp_path: Path) -> None:
    root = _model(tmp_path / "m")
    (root / "latent_codec" / "model.safetensors").write_bytes(b"lc" * 9 + b"lC")
    with pytest.raises(ModelLoadError, match=r"latent_codec/model.safetensors has sha256"):
        load_model_dir(root)


def test_missing_file_and_bad_card_are_refused(tmp_path: Path) -> None:
    root = _model(tmp_path / "m")
    (root / "tokenizer" / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="missing"):
        load_model_dir(root)
    (root / "model_card.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="unreadable"):
        load_model_dir(root)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    with pytest.raises(ModelLoadError, match=r"not a model directory \(no model_card\.json"):
        load_model_dir(tmp_path / "notes")


def test_a_directory_without_a_card_loads_with_the_identity_a_card_would_pin(tmp_path: Path) -> None:
    root = _model(tmp_path / "m")
    pinned = load_model_dir(root)
    (root / "model_card.json").unlink()
    (root / ".cache" / "huggingface").mkdir(parents=True)
    (root / ".cache" / "huggingface" / "x.metadata").write_text("bookkeeping")
    (root / "tokenizer" / "weights.safetensors.lock").write_text("")
    unpinned = load_model_dir(root)
    assert not unpinned.pinned and unpinned.model_id == "m@unpinned"
    assert unpinned.card["files"] == pinned.card["files"]
    assert unpinned.components_digest(["tokenizer"]) == pinned.components_digest(["tokenizer"])


def test_pickled_weights_are_refused(tmp_path: Path) -> None:
    root = _model(tmp_path / "m")
    (root / "tokenizer" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(ModelLoadError, match="pickled checkpoint"):
        load_model_dir(root)
    with pytest.raises(ModelLoadError, match="pickled checkpoint"):
        write_model_card(root, name="m", version="3", kind="bundle", config={})


def test_remote_url_is_copied_once_and_verified(tmp_path: Path) -> None:
    """Any fsspec URL (here the in-process memory filesystem) loads into the local cache."""
    import fsspec

    root = _model(tmp_path / "m")
    fs = fsspec.filesystem("memory")
    for path in root.rglob("*"):
        if path.is_file():
            fs.pipe(f"/models/m/{path.relative_to(root).as_posix()}", path.read_bytes())
    model = load_model_dir("memory://models/m", cache_dir=str(tmp_path / "cache"))
    assert model.sha256 == load_model_dir(root).sha256
    assert model.path.is_relative_to(tmp_path / "cache")
    with pytest.raises(ModelLoadError, match="no such directory"):
        load_model_dir("memory://models/absent", cache_dir=str(tmp_path / "cache"))
    # A stock directory (no card) is copied once too, then found in the cache.
    for path in root.rglob("*"):
        if path.is_file() and path.name != "model_card.json":
            fs.pipe(f"/models/stock/{path.relative_to(root).as_posix()}", path.read_bytes())
    stock = load_model_dir("memory://models/stock", cache_dir=str(tmp_path / "cache"))
    assert stock.model_id == "stock@unpinned" and stock.card["files"] == model.card["files"]
    fs.rm("/models/stock", recursive=True)
    assert load_model_dir("memory://models/stock", cache_dir=str(tmp_path / "cache")).path == stock.path
