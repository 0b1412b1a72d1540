"""The auto recipe's planner: synthetic evidence for each cell of the seed's matrix -> the plan.

Pure and TensorFlow-free (components.advise.plan), except the tap test on a tiny base.
"""

import numpy as np
import pytest

from graft.components.advise import Evidence, Probe, advice_markdown, plan, seed_plan
from graft.core.config import parse_config, with_values

STARTS = [
    "Conv1",
    "block_1_depthwise",
    "block_3_depthwise",
    "block_6_depthwise",
    "block_13_depthwise",
]
FRACTION = [1.0, 0.9, 0.8, 0.6, 0.25]
LAYERS = [
    "input_layer",
    "Conv1",
    "block_1_depthwise",
    "block_3_depthwise",
    "block_6_expand_relu",
    "block_6_depthwise",
    "block_13_expand_relu",
    "block_13_depthwise",
    "out_relu",
]


def _probe(layer, depth, acc, n=2000, size=224, seed=0):
    """A probe whose out-of-fold hits reach `acc` exactly, on the same n images."""
    rng = np.random.default_rng(seed)
    hits = np.zeros(n, bool)
    hits[rng.permutation(n)[: round(acc * n)]] = True
    p = Probe(layer, depth, size, 1280, acc, acc - 0.02, acc + 0.02, n)
    p.correct = hits.tolist()
    return p


def _evidence(n_train, final, mid, early=0.5, side=300, extra=(), hidden=None, speed=60.0):
    n = min(n_train, 2000)
    probes = [
        _probe("out_relu", "final", final, n, seed=1),
        _probe("block_13_expand_relu", "14x14", mid, n, seed=2),
        _probe("block_6_expand_relu", "28x28", early, n, seed=3),
        *extra,
    ]
    return Evidence(
        base="mobilenet_v2",
        image_size=224,
        n_train=n_train,
        n_val=n_train // 5,
        n_classes=5,
        per_class_min=n_train // 6,
        per_class_max=n_train // 4,
        median_side=side,
        probes=probes,
        stage_starts=STARTS,
        stage_fraction=FRACTION,
        base_layers=LAYERS,
        images_per_s=speed,
        hidden_head=hidden,
    )


def _decisions(p):
    return {d.what: d for d in p.decisions}


def test_small_and_similar_trains_the_classifier_only():
    p = plan(_evidence(600, final=0.97, mid=0.85), budget_minutes=15, small_data=1000)
    assert p.cell == {"size": "small", "similarity": "similar"}
    assert p.overrides["fine_tune.enabled"] is False
    assert p.overrides["base.cut_at"] is None
    assert "classifier only" in _decisions(p)["fine-tune"].reason


def test_large_and_similar_fine_tunes_the_top_stage():
    p = plan(_evidence(3000, final=0.90, mid=0.80), budget_minutes=60, small_data=1000)
    assert p.cell == {"size": "large", "similarity": "similar"}
    o = p.overrides
    assert o["fine_tune.enabled"] is True
    assert o["fine_tune.unfreeze.from_layer"] == STARTS[-1]
    assert o["fine_tune.guard_rule"] == "beyond_noise"
    assert 2 <= o["fine_tune.epochs"] <= 8
    assert o["fine_tune.max_minutes"] <= 60
    # the whole cosine schedule runs (no early stop part-way), the best val-loss epoch kept
    assert o["fine_tune.patience"] == o["fine_tune.epochs"] and o["fine_tune.cosine_decay"]
    assert "all run, the best val-loss epoch kept" in _decisions(p)["fine-tune"].reason
    # the rate from a range test; one stage, so one rate and nothing to unfreeze gradually
    assert o["fine_tune.lr_find"] is True
    assert o["fine_tune.layer_lr_decay"] == 1.0 and o["fine_tune.unfreeze.gradual_epochs"] == 0


def test_large_and_dissimilar_fine_tunes_more_of_the_base():
    p = plan(_evidence(4000, final=0.95, mid=0.95), budget_minutes=60, small_data=1000)
    assert p.cell == {"size": "large", "similarity": "dissimilar"}
    assert p.overrides["fine_tune.unfreeze.from_layer"] == STARTS[-2]  # two stages
    assert p.overrides["base.cut_at"] is None
    # the lower stage at a lower rate, joining after the first epoch
    assert p.overrides["fine_tune.layer_lr_decay"] < 1
    assert p.overrides["fine_tune.unfreeze.gradual_epochs"] == 1
    assert "gradual unfreezing" in {d.what: d.reason for d in p.decisions}["fine-tune"]


def test_small_and_dissimilar_reads_earlier_features_when_they_probe_better():
    p = plan(_evidence(400, final=0.78, mid=0.88), budget_minutes=60, small_data=1000)
    assert p.cell == {"size": "small", "similarity": "dissimilar"}
    assert p.overrides["base.cut_at"] == "block_13_expand_relu"
    assert p.overrides["fine_tune.enabled"] is False
    assert "earlier features" in _decisions(p)["fine-tune"].reason


def test_small_and_dissimilar_inside_the_noise_keeps_the_last_layer_and_no_fine_tuning():
    # textures measured this way: 14x14 0.838 vs final 0.836 on 371 images
    p = plan(_evidence(371, final=0.836, mid=0.838), budget_minutes=60, small_data=1000)
    assert p.cell == {"size": "small", "similarity": "dissimilar"}
    assert p.overrides["base.cut_at"] is None
    assert "inside the noise" in _decisions(p)["features"].reason
    assert p.overrides["fine_tune.enabled"] is False
    assert "could not be told from noise" in _decisions(p)["fine-tune"].reason


def test_large_data_fine_tunes_the_whole_base_even_when_an_earlier_block_probes_better():
    # chest X-rays measured this way: 14x14 0.979 vs final 0.963 on 2000 images
    p = plan(_evidence(3570, final=0.963, mid=0.979), budget_minutes=60, small_data=1000)
    assert p.cell == {"size": "large", "similarity": "dissimilar"}
    # the matrix: large and dissimilar fine-tunes most of the base; cutting is for small data
    assert p.overrides["base.cut_at"] is None and p.overrides["head.normalize"] is False
    assert "not cut" in _decisions(p)["features"].reason
    assert p.overrides["fine_tune.unfreeze.from_layer"] == STARTS[-2]


def test_an_earlier_block_that_probes_better_is_cut_when_no_fine_tuning_fits():
    # the same evidence, but a forward pass too slow for 2 epochs in the budget
    p = plan(_evidence(3570, 0.963, 0.979, speed=5.0), budget_minutes=15, small_data=1000)
    assert p.overrides["base.cut_at"] == "block_13_expand_relu"
    # the probes standardise an inner layer's features; the head does too
    assert p.overrides["head.normalize"] is True
    assert "standardised features" in _decisions(p)["head"].choice
    assert "probe better than the last layer" in _decisions(p)["features"].reason
    assert p.overrides["fine_tune.enabled"] is False


def test_the_whole_base_is_kept_when_fine_tuning_fits_at_the_smaller_input():
    # 128 px photos; the whole base fits 2+ epochs at 128 px but not at 224: no cut, 128 px
    small_px = [
        _probe("out_relu", "final", 0.963, 2000, size=128, seed=1),
        _probe("block_13_expand_relu", "14x14", 0.979, 2000, size=128, seed=2),
    ]
    ev = _evidence(3570, 0.963, 0.979, side=128, extra=small_px, speed=13.0)
    p = plan(ev, budget_minutes=15, small_data=1000)
    assert p.overrides["data.image_size"] == 128
    assert p.overrides["base.cut_at"] is None and p.overrides["fine_tune.enabled"] is True
    slow = plan(_evidence(3570, 0.963, 0.979, speed=13.0), budget_minutes=15, small_data=1000)
    assert slow.overrides["base.cut_at"] and slow.overrides["fine_tune.enabled"] is False


def test_the_budget_decides_the_epochs_and_can_rule_fine_tuning_out():
    big = plan(_evidence(3000, 0.9, 0.8), budget_minutes=600, small_data=1000)
    tight = plan(_evidence(3000, 0.9, 0.8, speed=5.0), budget_minutes=15, small_data=1000)
    assert big.overrides["fine_tune.epochs"] == 8
    assert tight.overrides["fine_tune.enabled"] is False
    assert "budget" in _decisions(tight)["fine-tune"].reason


def test_small_photos_get_a_smaller_input_when_it_probes_as_well():
    small_px = _probe("out_relu", "final", 0.899, 2000, size=128, seed=1)
    ev = _evidence(3000, 0.90, 0.8, side=128, extra=[small_px], speed=30.0)
    p = plan(ev, budget_minutes=15, small_data=1000)
    assert p.overrides["data.image_size"] == 128
    assert p.overrides["fine_tune.enabled"] is True  # fine-tuning fits, but not whole at 224 px
    # even when the whole fine-tuning schedule fits at the base's own size, the probes decide:
    # on flowers auto fine-tuned at 224 px matched 128 px (paired -0.001) at twice the time
    roomy = plan(
        _evidence(3000, 0.90, 0.8, side=128, extra=[small_px]), budget_minutes=60, small_data=1000
    )
    assert roomy.overrides["data.image_size"] == 128
    assert roomy.overrides["fine_tune.epochs"] == 8
    # small data does not fine-tune: the probes decide as well
    few = plan(
        _evidence(600, 0.90, 0.8, side=128, extra=[small_px]), budget_minutes=60, small_data=1000
    )
    assert few.overrides["data.image_size"] == 128
    better = _probe("out_relu", "final", 0.80, 2000, size=128, seed=9)
    p = plan(
        _evidence(3000, 0.90, 0.8, side=128, extra=[better]), budget_minutes=60, small_data=1000
    )
    assert p.overrides["data.image_size"] == 224
    assert "it pays" in _decisions(p)["input size"].reason


def test_a_hidden_layer_only_when_it_wins_beyond_the_noise():
    win = {"out_relu": {"difference": 0.03, "low": 0.01, "high": 0.05, "n": 2000}}
    tie = {"out_relu": {"difference": 0.01, "low": -0.01, "high": 0.03, "n": 2000}}
    assert (
        plan(_evidence(3000, 0.9, 0.8, hidden=win), budget_minutes=15, small_data=1000).overrides[
            "head.fc_size"
        ]
        == 256
    )
    p = plan(_evidence(3000, 0.9, 0.8, hidden=tie), budget_minutes=15, small_data=1000)
    assert p.overrides["head.fc_size"] == 0
    assert "simpler head" in _decisions(p)["head"].reason


@pytest.mark.parametrize(
    "ev",
    [
        _evidence(600, 0.97, 0.85),
        _evidence(3000, 0.9, 0.8),
        _evidence(4000, 0.95, 0.95),
        _evidence(400, 0.80, 0.82),
    ],
)
def test_every_plan_is_a_valid_config_and_says_why(ev):
    p = plan(ev, budget_minutes=15, small_data=1000)
    cfg = with_values(parse_config({"data": {"path": "x"}}), p.overrides)
    assert cfg.recipe == "auto"
    assert all(d.reason for d in p.decisions)
    assert "| similarity |" in advice_markdown(
        {
            "recipe": "auto",
            "cell": p.cell,
            "decisions": [vars(d) for d in p.decisions],
            "evidence": None,
        }
    )


def test_seed_plan_is_the_seeds_recipe():
    layers = [f"layer_{i}" for i in range(155)]
    o = seed_plan("mobilenet_v2", layers).overrides
    assert o["head.fc_size"] == 256
    assert o["fine_tune.optimizer"] == "sgd" and o["fine_tune.learning_rate"] == 1e-4
    assert o["fine_tune.momentum"] == 0.9
    assert o["fine_tune.unfreeze.from_layer"] == "layer_149"
    assert o["fine_tune.guard"] is False


def test_taps_on_mobilenet_v2_are_the_classic_block_outputs():
    import keras

    from graft.components.advise import taps

    base = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(224, 224, 3), alpha=0.35
    )
    tap_list, starts, frac = taps(base)
    assert tap_list == [
        ("out_relu", "final"),
        ("block_13_expand_relu", "14x14"),
        ("block_6_expand_relu", "28x28"),
    ]
    assert starts[-1] == "block_13_depthwise" and starts[-2] == "block_6_depthwise"
    assert frac[-1] < frac[-2] < 1


def test_probe_folds_keep_a_patients_images_together():
    """Labels set per patient, features that only identify the patient: an ungrouped k-fold
    scores the patients it trained on (near perfect); grouped folds see the truth (chance)."""
    from graft.components.advise import probe

    rng = np.random.default_rng(0)
    patients, per = 60, 8
    signature = rng.normal(size=(patients, 64))
    label = rng.permutation(np.arange(patients) % 2)
    groups = np.repeat([f"p{i}" for i in range(patients)], per)
    x = np.repeat(signature, per, axis=0) + 0.1 * rng.normal(size=(patients * per, 64))
    y = np.repeat(label, per)
    leaky = probe(x, y, 5).mean()
    honest = probe(x, y, 5, groups=groups).mean()
    assert leaky > 0.9
    assert honest < 0.7


def test_fine_tuning_epochs_read_the_speed_measured_at_the_planned_size():
    # flowers-like: 128 px photos probe better at 128 px; the 224 px pass ran on a busy
    # machine (13 images/s), the 128 px one did not: the plan reads the pass at its size
    small_px = _probe("out_relu", "final", 0.899, 2000, size=128, seed=1)
    ev = _evidence(3000, 0.90, 0.8, side=128, extra=[small_px], speed=13.0)
    scaled = plan(ev, budget_minutes=15, small_data=1000)
    ev.speeds = {224: 13.0, 128: 120.0}
    measured = plan(ev, budget_minutes=15, small_data=1000)
    assert measured.overrides["data.image_size"] == 128
    assert scaled.overrides["fine_tune.epochs"] < measured.overrides["fine_tune.epochs"] == 8


def test_the_fastest_pass_of_enough_images_is_the_speed():
    from types import SimpleNamespace as Pass

    from graft.components.advise import _fastest_pass

    busy, quiet, short = (
        Pass(computed=2981, seconds=142.0),
        Pass(computed=641, seconds=19.4),
        Pass(computed=10, seconds=0.01),
    )
    assert _fastest_pass([busy, quiet, short]) == pytest.approx(641 / 19.4)
    assert _fastest_pass([short]) is None


def test_the_budget_pays_for_advises_own_probes_first():
    ev = _evidence(3000, 0.9, 0.8, speed=60.0)
    roomy = plan(ev, budget_minutes=15, small_data=1000)
    ev.spent_s = 8 * 60.0  # measure and the probes to come take 8 of the 15 minutes
    spent = plan(ev, budget_minutes=15, small_data=1000)
    assert spent.overrides["fine_tune.epochs"] < roomy.overrides["fine_tune.epochs"]
    assert spent.overrides["fine_tune.max_minutes"] <= 15 - 8
    reason = _decisions(spent)["fine-tune"].reason
    assert (
        "15-minute budget (train.budget_minutes, of which advise's probes take ~8.0 min)" in reason
    )
    ev.spent_s = 15 * 60.0  # nothing left: no fine-tuning, and the decision says why
    none = plan(ev, budget_minutes=15, small_data=1000)
    assert none.overrides["fine_tune.enabled"] is False
    reason = _decisions(none)["fine-tune"].reason
    assert "advise's probes take ~15.0 min) fits 0 epoch(s)" in reason


def test_advises_passes_after_the_plan_are_priced_at_the_planned_size():
    from graft.components.advise import _advise_seconds

    ev = _evidence(3000, 0.9, 0.8, speed=20.0)
    ev.speeds, ev.spent_s, ev.later_probe_images = {224: 20.0, 128: 120.0}, 100.0, 6000
    assert _advise_seconds(ev, 224) == pytest.approx(100 + 6000 / 20)
    assert _advise_seconds(ev, 128) == pytest.approx(100 + 6000 / 120)
