"""The multi-depth head (head.taps): the planner's decision, the tapped base, and a run that
trains, evaluates from stored features and exports a SavedModel with the taps inside."""

import numpy as np
import pytest

from graft.components.advise import MULTI, Decision, Plan, _no_taps_past_your_cut, plan
from graft.core.config import parse_config, with_values
from tests.test_advise import _decisions, _evidence, _probe

TAPS = "out_relu+block_13_expand_relu+block_6_expand_relu"


def _with_multi(n_train, final, mid, multi, hidden=None):
    n = min(n_train, 2000)
    return _evidence(
        n_train, final, mid, extra=[_probe(TAPS, MULTI, multi, n, seed=4)], hidden=hidden
    )


def test_the_taps_are_read_when_their_concatenation_wins_beyond_the_noise():
    p = plan(_with_multi(400, final=0.80, mid=0.78, multi=0.88), budget_minutes=15, small_data=1000)
    o = p.overrides
    assert o["head.taps"] == ["block_13_expand_relu", "block_6_expand_relu"]
    assert o["base.cut_at"] is None and o["head.normalize"] is True
    d = _decisions(p)["multi-depth head"]
    assert d.choice.startswith("yes") and "it pays" in d.reason and "90%" in d.reason
    cfg = with_values(parse_config({"data": {"path": "x"}}), o)
    assert cfg.head.taps == ["block_13_expand_relu", "block_6_expand_relu"]


def test_inside_the_noise_the_head_reads_one_layer():
    p = plan(
        _with_multi(400, final=0.80, mid=0.78, multi=0.805), budget_minutes=15, small_data=1000
    )
    assert p.overrides["head.taps"] == []
    assert p.overrides["head.normalize"] is False
    d = _decisions(p)["multi-depth head"]
    assert d.choice == "no" and "not beyond the noise" in d.reason


def test_the_taps_replace_a_cut_they_beat_and_keep_the_base_whole():
    # small and dissimilar: block_13 beats the last layer (a cut), the concatenation beats both
    p = plan(_with_multi(400, final=0.70, mid=0.85, multi=0.93), budget_minutes=15, small_data=1000)
    assert p.overrides["base.cut_at"] is None
    assert p.overrides["head.taps"] == ["block_13_expand_relu", "block_6_expand_relu"]
    # and it is compared with the cut's layer, not the last one
    assert "for block_13_expand_relu" in _decisions(p)["multi-depth head"].reason


def test_the_hidden_layer_decision_reads_the_concatenations_probe():
    win = {TAPS: {"difference": 0.03, "low": 0.01, "high": 0.05, "n": 400}}
    p = plan(_with_multi(400, 0.80, 0.78, 0.88, hidden=win), budget_minutes=15, small_data=1000)
    assert p.overrides["head.fc_size"] == 256


def test_without_a_multi_probe_the_plan_says_so():
    p = plan(_evidence(400, final=0.80, mid=0.78), budget_minutes=15, small_data=1000)
    assert p.overrides["head.taps"] == []
    assert _decisions(p)["multi-depth head"].choice == "no"


def test_your_cut_keeps_the_head_on_its_layer():
    p = Plan("auto", {}, {"head.taps": ["block_6_expand_relu"]}, [Decision("x", 1, "y")])
    _no_taps_past_your_cut(p, {"base.cut_at": {"yours": {"base.cut_at": "block_13_add"}}})
    assert p.overrides["head.taps"] == [] and p.overrides["head.normalize"] is True
    assert "your base.cut_at is kept" in p.decisions[-1].reason


def _demo_base(**kw):
    """The tests' shallow demo base (conftest TINY_BASE: cut at block_6_expand_relu)."""
    from graft.core.config import BaseConfig
    from tests.conftest import TINY_BASE

    return BaseConfig(**{**TINY_BASE, **kw})


@pytest.mark.slow
def test_a_tapped_model_round_trips_and_names_its_layers(tmp_path):
    import keras

    from graft.components import model as gm
    from graft.core.config import HeadConfig

    head = HeadConfig(taps=["block_3_expand_relu", "block_1_expand_relu"], normalize=True)
    m = gm.build_model(_demo_base(), head, 3, 48)
    base = gm.base_of(m)
    layers = ["block_6_expand_relu", "block_3_expand_relu", "block_1_expand_relu"]
    assert gm.feature_layers(base) == layers
    dims = [int(base.get_layer(n).output.shape[-1]) for n in layers]
    assert gm.feature_extractor(m).output_shape == (None, sum(dims))
    # the stages the fine-tune plans by are the base's: the pooled taps add none
    assert gm.stage_starts(base) == gm.stage_starts(gm.build_base(_demo_base(), 48))
    x = np.random.default_rng(0).uniform(0, 255, (4, 48, 48, 3)).astype("float32")
    m.save(tmp_path / "m.keras")
    m2 = keras.models.load_model(tmp_path / "m.keras")
    assert gm.feature_layers(gm.base_of(m2)) == layers
    np.testing.assert_allclose(m2.predict(x, verbose=0), m.predict(x, verbose=0), atol=1e-6)


def test_a_tap_past_the_cut_or_missing_is_refused_by_name():
    from graft.components import model as gm

    cut = gm.build_base(_demo_base(cut_at="block_5_expand_relu"), 48)
    with pytest.raises(ValueError, match=r"head.taps: no layer 'block_6_expand_relu'.*cut"):
        gm.tap_base(cut, ["block_6_expand_relu"])
    with pytest.raises(ValueError, match="twice or the base's own output"):
        gm.tap_base(cut, ["block_5_expand_relu"])


@pytest.mark.slow
def test_a_multi_depth_run_trains_evaluates_and_serves_the_taps(tmp_path, tiny_data):
    import json
    import os

    import tensorflow as tf

    from graft.components import data as gdata
    from graft.components import model as gm
    from graft.components.train import load_model
    from graft.pipeline.runner import run_pipeline
    from tests.conftest import step_output, tiny_config

    taps = ["block_3_expand_relu", "block_1_expand_relu"]
    cfg = parse_config(tiny_config(tmp_path, tiny_data, head__taps=taps, head__normalize=True))
    run = run_pipeline(cfg)
    assert run["status"] == "succeeded", run
    model = load_model(os.path.join(step_output(run, "train_head"), "model.keras"))
    assert gm.feature_layers(gm.base_of(model)) == [cfg.base.cut_at, *taps]
    # evaluate scored the head on stored features of all three taps, as the model would
    ev = json.load(open(os.path.join(step_output(run, "evaluate"), "evaluation.json")))
    assert ev["candidate"]["accuracy"] > 0.5  # three shape classes: chance is 0.33
    # the SavedModel TF Serving loads holds the taps: it scores raw JPEGs as Keras does
    sm = tf.saved_model.load(run["steps"]["export"]["summary"]["path"])
    examples = step_output(run, "ingest")
    blobs = [b for b, _ in gdata.raw_dataset(examples, "test").as_numpy_iterator()]
    served = sm.signatures["serving_default"](image_bytes=tf.constant(blobs))
    pixels = np.stack([gdata.decode_and_resize(tf.constant(b), 48).numpy() for b in blobs])
    assert np.abs(served["probabilities"].numpy() - model.predict(pixels, verbose=0)).max() <= 1e-4


def test_with_fine_tuning_planned_the_head_reads_one_layer_and_says_why():
    """Large data that fine-tunes: the taps' gain was measured on frozen features, which
    fine-tuning changes, so the plan keeps the head on one layer and says so."""
    p = plan(
        _with_multi(5000, final=0.80, mid=0.78, multi=0.88), budget_minutes=60, small_data=1000
    )
    o = p.overrides
    assert o["fine_tune.enabled"] is True
    assert o["head.taps"] == [] and o["head.normalize"] is False
    d = _decisions(p)["multi-depth head"]
    assert d.choice == "no" and "fine-tuning is planned" in d.reason and "90%" in d.reason
    # the same evidence with a budget that fits no fine-tuning: the taps are read
    p = plan(
        _with_multi(5000, final=0.80, mid=0.78, multi=0.88), budget_minutes=0.1, small_data=1000
    )
    assert p.overrides.get("fine_tune.enabled") is False
    assert p.overrides["head.taps"] == ["block_13_expand_relu", "block_6_expand_relu"]
