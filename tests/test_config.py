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


def test_group_by_is_refused_where_nothing_could_be_grouped():
    """TFDS examples have no file names or columns: a group_by there was accepted, recorded in
    stats.json as if applied, and ignored."""
    with pytest.raises(ConfigError, match="data.group_by is not supported with data.source 'tfds'"):
        parse_config({"data": {"source": "tfds", "tfds_name": "x", "group_by": "^([^_]+)_"}})
    assert parse_config({"data": {"path": "x", "group_by": "^([^_]+)_"}}).data.group_by


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
    assert cfg.base.weights == "demo"  # shipped with the package: a copied config still finds it
    assert cfg.data.path == str(REPO / "data" / "demo")  # relative to the config file


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("train_head", "epochs", 10**6),
        ("fine_tune", "epochs", 10**6),
        ("fine_tune", "warmup_epochs", 1e9),
        ("head", "fc_size", 10**7),
        ("train_head", "batch_size", 10**7),
        ("fine_tune", "batch_size", 10**7),
        ("push", "keep", 10**6),
        ("evaluate", "top_k", 10**6),
    ],
)
def test_counts_and_sizes_have_upper_bounds(section, key, value):
    with pytest.raises(ConfigError, match=rf"{section}\.{key}: Input should be less than"):
        parse_config({"data": {"path": "x"}, section: {key: value}})


def test_every_int_field_has_an_upper_bound():
    """A new count without `le=` would let a typo (epochs: 1000000) through validation."""
    from pydantic import BaseModel

    from graft.core.config import GraftConfig

    unbounded, seen = [], set()

    def walk(model: type[BaseModel], path: str) -> None:
        if model in seen:
            return
        seen.add(model)
        for name, f in model.model_fields.items():
            ann = f.annotation
            args = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type)]
            for sub in [ann, *args]:
                if isinstance(sub, type) and issubclass(sub, BaseModel):
                    walk(sub, f"{path}{f.alias or name}.")
            if ann in (int, float) and name not in ("seed",):
                has_le = any(getattr(m, "le", None) is not None for m in f.metadata)
                has_lt = any(getattr(m, "lt", None) is not None for m in f.metadata)
                if not (has_le or has_lt):
                    unbounded.append(f"{path}{f.alias or name}")

    walk(GraftConfig, "")
    assert not unbounded, f"numbers without an upper bound: {unbounded}"


def test_yaml_alias_bomb_is_refused(tmp_path):
    p = tmp_path / "bomb.yaml"
    lines = ["data: {path: imgs}", 'a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    lines.append("base: {kwargs: {alpha: *a8}}")  # 6 * 9**8 strings if expanded
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "alias '*a0'" in msg and "not allowed" in msg


def test_yaml_merge_keys_are_refused_but_anchors_alone_load(tmp_path):
    p = tmp_path / "merge.yaml"
    p.write_text("data: &d {path: imgs}\ntrain_head: {epochs: 2}\nfine_tune:\n  <<: *d\n")
    with pytest.raises(ConfigError, match=r"merge\.yaml: .*alias '\*d'"):
        load_config(p)
    p.write_text("data: &d {path: imgs}\ntrain_head: {epochs: 2}\n")
    assert load_config(p).train_head.epochs == 2  # an anchor that nothing refers to is harmless


def test_set_value_alias_is_refused():
    with pytest.raises(ConfigError, match=r"--set value .*alias"):
        load_config(None, ["base.kwargs=[&x 1, *x]"], {"data": {"path": "x"}})


# ---------------------------------------------------------------- strictness (issue 29.12)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("train_head: {epochs: true}\n", r"train_head\.epochs: Input should be a valid integer"),
        ("train_head: {epochs: '5'}\n", r"train_head\.epochs: Input should be a valid integer"),
        ("fine_tune: {learning_rate: '1e-4'}\n", r"fine_tune\.learning_rate: .*valid number"),
        ("fine_tune: {enabled: 'yes'}\n", r"fine_tune\.enabled: Input should be a valid boolean"),
        ("data: {image_size: 64.0}\n", r"data\.image_size: Input should be a valid integer"),
    ],
)
def test_values_of_the_wrong_type_are_refused_naming_the_file(tmp_path, text, expected):
    p = tmp_path / "c.yaml"
    p.write_text(
        "data: {path: imgs}\n" + text
        if not text.startswith("data:")
        else text.replace("data: {", "data: {path: imgs, ")
    )
    with pytest.raises(ConfigError, match=expected) as e:
        load_config(p)
    assert str(p) in str(e.value)


def test_an_int_is_still_a_float_and_set_values_stay_typed(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data: {path: imgs}\nfine_tune: {learning_rate: 1}\n")
    cfg = load_config(p, ["train_head.epochs=7", "fine_tune.enabled=false"])
    assert cfg.fine_tune.learning_rate == 1.0 and cfg.train_head.epochs == 7
    assert cfg.fine_tune.enabled is False
    with pytest.raises(ConfigError, match=r"train_head\.epochs: Input should be a valid integer"):
        load_config(p, ["train_head.epochs='5'"])


def test_duplicate_keys_are_refused_with_both_lines(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data: {path: imgs}\ntrain_head: {epochs: 3}\ndata: {path: other}\n")
    with pytest.raises(
        ConfigError, match=r"duplicate key 'data' at line 3 \(first at line 1\)"
    ) as e:
        load_config(p)
    assert str(p) in str(e.value)
    p.write_text("data:\n  path: imgs\n  path: other\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'path' at line 3"):
        load_config(p)


def test_deep_yaml_is_a_clear_error(tmp_path):
    p = tmp_path / "deep.yaml"
    p.write_text("data: " + "[" * 20_000 + "]" * 20_000 + "\n")
    with pytest.raises(ConfigError, match=r"deep\.yaml: not valid YAML: .*nested deeper than 64"):
        load_config(p)
    p.write_text("".join("  " * i + f"k{i}:\n" for i in range(200)))
    with pytest.raises(ConfigError, match=r"deep\.yaml: not valid YAML: .*nested"):
        load_config(p)


def test_non_utf8_config_is_a_clear_error(tmp_path):
    p = tmp_path / "latin1.yaml"
    p.write_bytes("data: {path: caf\u00e9}\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.yaml: not UTF-8 text \(byte 0xe9 at offset"):
        load_config(p)
