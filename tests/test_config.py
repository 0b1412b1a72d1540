import pytest

from graft.core.config import ConfigError, load_config, parse_config


def test_defaults_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data: {path: imgs}\ntrain_head: {epochs: 4}\n")
    cfg = load_config(
        p, ["train_head.epochs=3", "fine_tune.learning_rate=3e-4", "base.kwargs={alpha: 0.5}"]
    )
    assert cfg.train_head.epochs == 3
    assert cfg.fine_tune.learning_rate == pytest.approx(3e-4)
    assert cfg.base.kwargs == {"alpha": 0.5}
    assert cfg.base.name == "mobilenet_v2"


def test_misspelled_key_names_path_and_allowed(tmp_path):
    with pytest.raises(ConfigError) as e:
        parse_config({"data": {"path": "x"}, "train_head": {"epoch": 3}})
    msg = str(e.value)
    assert "train_head.epoch" in msg and "did you mean 'epochs'" in msg and "batch_size" in msg


def test_misspelled_section(tmp_path):
    with pytest.raises(ConfigError, match=r"fine_tuning: unknown key \(did you mean 'fine_tune'"):
        parse_config({"data": {"path": "x"}, "fine_tuning": {}})


def test_negative_epochs_names_path():
    with pytest.raises(
        ConfigError,
        match=r"fine_tune\.epochs: Input should be greater than or equal to 1 \(got -2\)",
    ):
        parse_config({"data": {"path": "x"}, "fine_tune": {"epochs": -2}})


def test_bad_choice_lists_allowed_values():
    with pytest.raises(ConfigError, match=r"train_head.feature_cache: .*'auto', 'on' or 'off'"):
        parse_config({"data": {"path": "x"}, "train_head": {"feature_cache": "maybe"}})


def test_unknown_backbone_lists_valid():
    with pytest.raises(
        ConfigError, match=r"base.name: .*unknown backbone 'resnet9000'; valid: .*mobilenet_v2"
    ):
        parse_config({"data": {"path": "x"}, "base": {"name": "resnet9000"}})


def test_splits_must_sum_to_one():
    with pytest.raises(ConfigError, match="data.splits: .*sum to 1"):
        parse_config({"data": {"path": "x", "splits": {"train": 0.5, "val": 0.1, "test": 0.1}}})


def test_bad_set_syntax(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train_head.epochs"], {"data": {"path": "x"}})


def test_cli_config_show(tmp_path, capsys):
    from graft.pipeline.cli import main

    p = tmp_path / "c.yaml"
    p.write_text("data: {path: imgs}\n")
    assert main(["config", "show", "--config", str(p), "--set", "train_head.epochs=7"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 7" in out and "kubeflow:" in out
    assert main(["config", "show", "--config", str(p), "--set", "train_head.epoch=7"]) == 2
    assert "train_head.epoch" in capsys.readouterr().err


def test_demo_config_is_valid():
    from conftest import REPO

    cfg = load_config(REPO / "configs" / "demo.yaml")
    assert cfg.base.weights.endswith("demo_base.weights.h5")
