"""advise.bases (#31 item 6): the backbone probes, BASE_RULE, and a run on the chosen base."""

import json
import os
import zipfile
from pathlib import Path

import pytest
from conftest import SHARED, step_output, step_summary, tiny_config

# $GRAFT_SHARED (make test-real's SHARED), else shared/ beside the clone: as every real test
SHARED_MODELS = SHARED / "keras" / "models"
V2_FILE = SHARED_MODELS / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
V1_FILE = SHARED_MODELS / "mobilenet_2_5_224_tf_no_top.h5"
CATS_DOGS = SHARED / "datasets" / "cats_dogs"


def _gap(d, lo, hi):
    return {"difference": d, "low": lo, "high": hi, "n": 300}


def _base(label, acc, gain, flops, speed=100.0, configured=False, name="mobilenet_v2"):
    """A probed base; `gain`: its paired gain over the configured base (None for that one)."""
    return {
        "label": label,
        "name": name,
        "weights": f"{label}.h5",
        "kwargs": {},
        "configured": configured,
        "size": 224,
        "accuracy": acc,
        "low": acc - 0.05,
        "high": acc + 0.05,
        "images_per_s": speed,
        "params": 1,
        "flops": flops,
        "gain": gain,
        "behind_best": _gap(0, 0, 0),
    }


def _bases(*candidates):
    return {"n": 300, "folds": 5, "resize": "squash", "candidates": list(candidates)}


def test_another_base_only_when_better_beyond_the_noise_or_cheaper_and_non_inferior():
    from graft.components.advise import choose_base

    mine = _base("mine", 0.90, None, 600e6, configured=True)
    # cheaper and at most a point worse at 95%: the cheaper one
    close = _base("close", 0.895, _gap(-0.005, -0.009, 0.001), 80e6)
    chosen, d = choose_base(_bases(mine, close))
    assert chosen is close and d.what == "base" and d.choice == "close"
    assert "gain over the configured -0.005 [-0.009, +0.001]" in d.reason
    assert "costs less" in d.reason
    # cheaper, level within the noise but possibly 4 points worse (a small sample): kept
    wide = _base("wide", 0.864, _gap(-0.036, -0.086, 0.007), 42e6)
    chosen, d = choose_base(_bases(mine, wide))
    assert chosen is mine and "the configured base" in d.reason
    # better beyond the noise wins even when it costs more; the cheapest of the better ones
    big = _base("big", 0.95, _gap(0.05, 0.02, 0.08), 900e6)
    bigger = _base("bigger", 0.96, _gap(0.06, 0.03, 0.09), 1800e6)
    chosen, d = choose_base(_bases(mine, bigger, big, close))
    assert chosen is big and "probes better than the configured base beyond the noise" in d.reason
    # as costly and level: the configured base stays
    twin = _base("twin", 0.91, _gap(0.01, -0.01, 0.03), 600e6)
    assert choose_base(_bases(mine, twin))[0] is mine
    # a skipped base is named with its reason and never chosen
    skipped = {**_base("gone", 0, None, None), "skipped": "weights file not found: gone.h5"}
    chosen, d = choose_base(_bases(mine, skipped))
    assert chosen is mine and "gone skipped (weights file not found: gone.h5)" in d.reason
    # without a FLOP count the measured speed ranks them
    slow = _base("slow", 0.90, None, None, speed=100.0, configured=True)
    fast = _base("fast", 0.90, _gap(0.0, -0.005, 0.005), None, speed=900.0)
    assert choose_base(_bases(slow, fast))[0] is fast


def test_plan_base_overrides_the_base_or_keeps_yours_and_says_what_it_would_choose():
    from graft.components.advise import Plan, choose_base, plan_base

    mine = _base("mine", 0.80, None, 600e6, configured=True)
    other = {
        **_base("other", 0.90, _gap(0.1, 0.05, 0.15), 80e6, name="mobilenet"),
        "kwargs": {"a": 1},
    }
    chosen, d = choose_base(_bases(mine, other))
    p = Plan("auto", {}, {}, [])
    assert plan_base(p, chosen, d, {}) == {}
    assert p.overrides == {
        "base.name": "mobilenet",
        "base.weights": "other.h5",
        "base.kwargs": {"a": 1},
    }
    assert p.decisions[0].what == "base"

    p = Plan("auto", {}, {}, [])
    kept = plan_base(p, chosen, d, {"base.weights": "mine.h5"})
    assert p.overrides == {} and kept["base"]["advise"]["base.name"] == "mobilenet"
    assert "advise would choose other" in p.decisions[-1].reason


def test_a_listed_base_without_its_weights_is_skipped_with_the_reason(tmp_path):
    from graft.components.advise import WeightsUnavailable, _build_listed_base
    from graft.core.config import BaseChoice

    missing = BaseChoice(name="mobilenet", weights=str(tmp_path / "gone.h5"))
    with pytest.raises(WeightsUnavailable, match="weights file not found: .*gone.h5"):
        _build_listed_base(missing, 32)
    # tests point KERAS_HOME at an empty folder: no ImageNet file there, and none downloaded
    imagenet = BaseChoice(name="mobilenet", weights="imagenet", kwargs={"alpha": 0.25})
    with pytest.raises(WeightsUnavailable, match="not in keras' cache"):
        _build_listed_base(imagenet, 32)
    assert not any(Path(os.environ["KERAS_HOME"]).rglob("*.h5"))


def test_advise_bases_is_a_strict_list_of_bases_with_paths_relative_to_the_file(tmp_path):
    from graft.core.config import ConfigError, load_config, parse_config

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(
        f"data: {{path: {tmp_path}}}\n"
        "advise:\n  bases:\n    - {name: mobilenet, weights: w/v1.h5, kwargs: {alpha: 0.25}}\n"
        "    - {name: mobilenet_v2, weights: demo}\n"
    )
    cfg = load_config(str(cfg_file))
    assert cfg.advise.bases[0].weights == str(tmp_path / "w" / "v1.h5")
    assert cfg.advise.bases[1].weights == "demo" and cfg.advise.bases[0].kwargs == {"alpha": 0.25}
    assert parse_config({"data": {"path": "x"}}).advise.bases == []  # default: nothing probed
    with pytest.raises((ConfigError, ValueError), match="resnet9"):
        parse_config({"data": {"path": "x"}, "advise": {"bases": [{"name": "resnet9"}]}})
    with pytest.raises((ConfigError, ValueError), match="cut_at"):
        parse_config(
            {"data": {"path": "x"}, "advise": {"bases": [{"name": "mobilenet", "cut_at": "x"}]}}
        )


@pytest.mark.slow  # trains a head
def test_auto_probes_the_listed_bases_and_trains_on_the_chosen_one(tmp_path, tiny_data):
    from graft.components.advise import choose_base
    from graft.core.config import parse_config
    from graft.pipeline.runner import run_pipeline

    raw = tiny_config(
        tmp_path, tiny_data, recipe="auto", advise__folds=3, advise__keep=["data.image_size"]
    )
    raw["data"]["image_size"] = 32
    raw["advise"]["bases"] = [
        {"name": "mobilenet", "weights": None, "kwargs": {"alpha": 0.25}},  # cheaper
        {"name": "mobilenet", "weights": str(tmp_path / "gone.h5")},
    ]
    run = run_pipeline(parse_config(raw), until="train_head")
    out = step_output(run, "advise")
    advice = json.load(open(os.path.join(out, "advice.json")))
    bases = advice["evidence"]["bases"]
    mine, v1, gone = bases["candidates"]
    assert mine["configured"] and mine["label"] == "mobilenet_v2 (demo, alpha=0.35)"
    assert "weights file not found" in gone["skipped"] and "accuracy" not in gone
    n = advice["evidence"]["n_train"]
    for b in (mine, v1):
        assert b["size"] == 32 and b["behind_best"]["n"] == n == bases["n"]
        assert 0 <= b["low"] <= b["accuracy"] <= b["high"] <= 1
        assert b["images_per_s"] > 0 and b["params"] > 0
    assert v1["flops"] < mine["flops"] and v1["params"] < mine["params"]
    g = v1["gain"]
    assert abs(g["difference"] - (v1["accuracy"] - mine["accuracy"])) < 1e-9
    # the rule, applied to the recorded evidence, is what advise chose
    chosen, _ = choose_base(bases)
    decision = advice["decisions"][0]
    assert decision["what"] == "base" and decision["choice"] == chosen["label"] == bases["chosen"]
    md = open(os.path.join(out, "advice.md")).read()
    assert "| mobilenet (random init, alpha=0.25) | 32 |" in md and "skipped: weights" in md

    # each base's features went into the store under its own fingerprint
    store = Path(tmp_path, "runs", "features")
    for b in (mine, v1):
        assert b["computed"] == n
        assert any(store.glob(f"{b['name']}-*/32/{b['layer']}")), b["label"]

    # measure, its plan and the trained model are the chosen base's
    assert advice["evidence"]["base"] == chosen["name"]
    model = Path(step_output(run, "train_head"), "model.keras")
    layers = zipfile.ZipFile(model).read("config.json").decode()
    if chosen is v1:
        assert advice["overrides"]["base.name"] == "mobilenet"
        assert advice["overrides"]["base.kwargs"] == {"alpha": 0.25}
        assert "conv_pw_13" in layers and "block_16" not in layers
    else:
        assert "base.name" not in advice["overrides"] and "block_16" in layers
    # the head stage read the chosen base's features from the store advise filled (the same
    # seeded weights: random init too), so it ran no training image through the base
    assert step_summary(run, "train_head")["features_reused"] >= n


@pytest.mark.real
def test_real_bases_mobilenet_v2_and_v1_on_cats_dogs(tmp_path):
    """Both shared ImageNet bases probed on 200 cats_dogs images: accuracy and cost recorded."""
    if not (V2_FILE.exists() and V1_FILE.exists() and CATS_DOGS.is_dir()):
        pytest.skip(f"needs ../shared: {V2_FILE.name}, {V1_FILE.name} and datasets/cats_dogs")
    from graft.components.advise import choose_base
    from graft.core.config import parse_config
    from graft.pipeline.runner import run_pipeline

    data = tmp_path / "cats_dogs"
    for label in ("cats", "dogs"):  # 100 train photos per class, linked, never copied
        (data / label).mkdir(parents=True)
        for f in sorted((CATS_DOGS / "train" / label).glob("*.jpg"))[:100]:
            (data / label / f.name).symlink_to(f)
    raw = tiny_config(
        tmp_path, data, recipe="auto", advise__folds=5, advise__keep=["data.image_size"]
    )
    raw["data"]["image_size"] = 160
    raw["base"] = {"name": "mobilenet_v2", "weights": str(V2_FILE)}
    raw["advise"]["bases"] = [
        {"name": "mobilenet", "weights": str(V1_FILE), "kwargs": {"alpha": 0.25}}
    ]
    run = run_pipeline(parse_config(raw), until="advise")
    advice = json.load(open(os.path.join(step_output(run, "advise"), "advice.json")))
    bases = advice["evidence"]["bases"]
    v2, v1 = bases["candidates"]
    record = {
        b["label"]: {
            k: b[k] for k in ("accuracy", "low", "high", "images_per_s", "flops", "params")
        }
        for b in (v2, v1)
    }
    record["chosen"] = bases["chosen"]
    print("bases:", json.dumps(record))
    assert v2["accuracy"] > 0.8 and v1["accuracy"] > 0.7  # ImageNet features tell cats from dogs
    assert v1["flops"] < v2["flops"] / 5
    assert choose_base(bases)[0]["label"] == bases["chosen"] == advice["decisions"][0]["choice"]


def test_flops_match_the_published_multiply_adds():
    import keras

    from graft.components.advise import _flops

    # MobileNetV2 paper: 300M multiply-adds at 224; MobileNet v1 0.25: 41M
    v2 = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(224, 224, 3))
    v1 = keras.applications.MobileNet(
        include_top=False, weights=None, input_shape=(224, 224, 3), alpha=0.25
    )
    assert abs(_flops(v2) / 2 - 300e6) < 0.05 * 300e6
    assert abs(_flops(v1) / 2 - 41e6) < 0.05 * 41e6


def test_the_reports_recipe_section_shows_the_bases_table():
    from markupsafe import escape

    from graft.components.advise import BASE_RULE, choose_base
    from graft.components.report import advice_html

    mine = _base("mine", 0.80, _gap(0.1, 0.05, 0.15), 600e6, configured=True)
    other = {**_base("other <b>", 0.90, _gap(0, 0, 0), 80e6), "gain": _gap(0.1, 0.05, 0.15)}
    gone = {**_base("gone", 0, None, None), "skipped": "weights file not found: gone.h5"}
    bases = {**_bases(mine, other, gone), "rule": BASE_RULE}
    bases["chosen"] = choose_base(bases)[0]["label"]
    html = str(
        advice_html(
            {
                "recipe": "auto",
                "decisions": [],
                "evidence": {"n_train": 300, "n_classes": 2, "probes": [], "bases": bases},
            }
        )
    )
    assert "Backbone (advise.bases)" in html and str(escape(BASE_RULE)) in html
    assert "Chosen: <b>other &lt;b&gt;</b>" in html
    assert "+10.0 pts" in html and "600" in html and "80" in html  # gain, MFLOPs
    assert "skipped: weights file not found: gone.h5" in html
