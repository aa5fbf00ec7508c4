"""Config: typed values, clear one-line errors naming the key (and file:line), presets and files that build."""

import dataclasses
from pathlib import Path

import pytest

from bigbatch.config import Config, load_config, parse_set
from bigbatch.errors import UserError
from bigbatch.nn.models import build_model
from bigbatch.presets import PRESETS
from bigbatch.train.defaults import DataStats, resolve_from_data

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_set_overrides_are_typed():
    cfg = load_config(None, ["train.max_steps=12", "optim.warmup_steps=2", "optim.lr=1e-3", "model.norm=rmsnorm", "optim.betas=[0.8, 0.9]",
                             "train.compile=true"])
    assert cfg.train.max_steps == 12 and cfg.optim.lr == 1e-3 and cfg.model.norm == "rmsnorm"
    assert cfg.optim.betas == (0.8, 0.9) and cfg.train.compile is True


def test_unknown_key_names_the_nearest():
    with pytest.raises(UserError, match=r"unknown config key 'train.max_step' \(did you mean 'train.max_steps'\?\)"):
        load_config(None, ["train.max_step=3"])


def test_bad_choice_lists_the_allowed_values():
    with pytest.raises(UserError, match="model.norm='batchnorm' is invalid: expected one of layernorm, rmsnorm"):
        load_config(None, ["model.norm=batchnorm"])


@pytest.mark.parametrize("item,message", [
    ("train.max_steps=ten", "expected an integer"),
    ("train.max_steps=0", "expected a number > 0"),
    ("model.dropout=1.5", r"expected a number in \[0, 1\]"),
    ("model.d_model=30 model.n_heads=4", "must be divisible by model.n_heads"),
    ("train.label_smoothing=2", r"expected a number in \[0, 1\]"),
    ("train.epochs=0", "expected a number > 0"),
    ("optim.betas=[0.9]", "expected a list of 2 numbers"),
    ("train", "expected key=value"),
])
def test_bad_values(item, message):
    with pytest.raises(UserError, match=message):
        load_config(None, item.split(" "))


def test_yaml_errors_name_file_and_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("task: lm\ntrain:\n  max_steps: 5\n  warmup: 3\n")
    with pytest.raises(UserError, match=rf"{path}:4: unknown config key 'train.warmup'"):
        load_config(path)
    path.write_text("model:\n  d_model: 32\n  n_heads: 5\n")
    with pytest.raises(UserError, match=rf"{path}:2: model.d_model=32 must be divisible"):
        load_config(path)
    path.write_text("train: [1, 2\n")
    with pytest.raises(UserError, match=rf"{path}:\d+: not valid YAML"):
        load_config(path)
    with pytest.raises(UserError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")


def test_yaml_round_trip(tmp_path):
    cfg = load_config(None, ["model.pos=rope", "optim.schedule=wsd"])
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg


def test_parse_set_nests():
    assert parse_set(["a.b.c=1", "a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_file_loads_and_builds(path):
    cfg = load_config(path)
    if cfg.task in ("vision", "audio"):  # image size / sample rate from the builtin's name (no data read)
        from bigbatch.data.pipeline import resolve_before_data

        cfg = resolve_before_data(cfg)[0]
    if cfg.data.vocab_size == 0:  # what resolve_before_data would size from the source
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, vocab_size=8000))
    cfg, _ = resolve_from_data(cfg, DataStats(n_examples=20_000, n_tokens=2_000_000, length_p99=60, n_labels=20))
    filled = {"vocab_size": cfg.model.vocab_size or 259, "num_classes": cfg.model.num_classes or 20}
    model = build_model(cfg.task, cfg.model.__class__(**{**cfg.model.__dict__, **filled}))
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("name", PRESETS)
def test_presets_build(name):
    cfg = PRESETS[name]()
    assert isinstance(cfg, Config)
    assert load_config(None, [], base=cfg) == cfg


def test_default_preset_equals_its_yaml():
    assert load_config(Path(__file__).parent.parent / "configs" / "stdlib_lm.yaml") == PRESETS["default"]()
