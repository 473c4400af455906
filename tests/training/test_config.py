"""Config schema: the shipped pipelines validate; errors name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO
from wsi_patchgd.errors import ConfigError
from wsi_patchgd.training.config import load_config, parse_bytes


@pytest.mark.parametrize("path", sorted((REPO / "pipelines").glob("*.yaml")), ids=lambda p: p.name)
def test_pipelines_validate(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.data.manifest.endswith("manifest.csv")
    assert Path(cfg.output.dir).is_absolute() or cfg.output.dir.startswith(str(path.parent))


def test_overrides_and_errors(tmp_path: Path) -> None:
    c = tmp_path / "c.yaml"
    c.write_text("data: {manifest: m.csv}\nmodel: {num_classes: 6}\n")
    cfg = load_config(c, ["optim.lr=3e-4", "patchgd.method=gd", "data.val_folds=[2, 3]"])
    assert cfg.optim.lr == 3e-4 and cfg.patchgd.method == "gd" and cfg.data.val_folds == [2, 3]
    assert cfg.data.manifest == str(tmp_path / "m.csv")
    for ov, msg in [
        ("model.backbon=x", "did you mean 'model.backbone'"),
        ("optim.lr=fast", "'optim.lr' must be a number"),
        ("schedule.epochs=0", "'schedule.epochs' = 0 must be >= 1"),
        ("precision=fp8", "'precision' = 'fp8' is invalid"),
        ("data.train_folds=[2]", "overlap"),
        ("patchgd.memory_budget=lots", "size like 4GB"),
        ("nonsense", "key=value"),
        ("model.trainable=-2", "'model.trainable' = -2 is invalid"),
        ("model.trainable=[1]", "'model.trainable' must be an integer or a word"),
        ("model.backbone='timm:'", "'model.backbone' = 'timm:' needs a model name"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            load_config(c, ["data.val_folds=[2]", ov] if "train_folds" in ov else [ov])
    c.write_text("data: [1, 2]\n")
    with pytest.raises(ConfigError, match="'data' must be a mapping"):
        load_config(c)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_model_section_keys() -> None:
    base = ["data.manifest=m.csv"]
    assert load_config(None, base).model.trainable == "all"
    cfg = load_config(
        None, [*base, "model.backbone=timm:vit_tiny_patch16_224", "model.trainable=2"]
    )
    assert (cfg.model.backbone, cfg.model.trainable) == ("timm:vit_tiny_patch16_224", 2)
    assert load_config(None, [*base, "model.trainable=all"]).model.trainable == "all"


def test_parse_bytes() -> None:
    assert parse_bytes("4GB") == 4_000_000_000
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("1e9") == 1_000_000_000


def test_cache_settings_are_checked_when_the_config_loads() -> None:
    base = ["data.manifest=m.csv"]
    cfg = load_config(None, [*base, "data.cache_dir=/tmp/c", "data.cache_size=2GB"])
    assert (cfg.data.cache_dir, cfg.data.cache_size) == ("/tmp/c", "2GB")
    with pytest.raises(ConfigError, match="data.cache_size"):
        load_config(None, [*base, "data.cache_size=lots"])
    with pytest.raises(ConfigError, match="data.remote_backend"):
        load_config(None, [*base, "data.remote_backend=boto"])
