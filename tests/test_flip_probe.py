"""advise's test-time flip decision: the k-fold flip probe, the plan rule, the mirror store."""

import numpy as np
import pytest


def _flip(plain, both, lo, hi):
    gain = {"difference": both - plain, "low": lo, "high": hi, "n": 300}
    return {
        "size": 224,
        "layer": "out_relu",
        "resize": "crop",
        "n": 300,
        "folds": 5,
        "plain": plain,
        "flip_average": both,
        "gain": gain,
    }


def test_plan_flip_turns_flips_on_only_beyond_the_noise():
    from graft.components.advise import Plan, plan_flip

    def decide(flip):
        p = Plan("auto", {}, {}, [])
        plan_flip(p, flip)
        d = next(x for x in p.decisions if x.what == "test-time flips")
        assert d.choice == ("on" if p.overrides["export.flip_average"] else "off")
        return d

    d = decide(_flip(0.90, 0.92, 0.004, 0.036))
    assert d.choice == "on" and "paired +0.020 [+0.004, +0.036]" in d.reason
    assert decide(_flip(0.90, 0.91, -0.004, 0.024)).choice == "off"
    assert decide(_flip(0.90, 0.88, -0.036, -0.004)).choice == "off"


def test_flip_hits_find_the_gain_of_a_second_view_and_none_from_the_same_view():
    from graft.components.advise import flip_hits

    rng = np.random.default_rng(0)
    n, d = 400, 16
    y = np.repeat([0, 1], n // 2)
    signal = np.outer(y * 2 - 1, np.ones(d)) * 0.15
    x = signal + rng.normal(size=(n, d))
    plain, both = flip_hits(x, x, y, folds=5)
    assert np.array_equal(plain, both)  # the mirror the same as the image: nothing to average
    mirror = signal + rng.normal(size=(n, d))  # another view with its own noise
    plain2, both2 = flip_hits(x, mirror, y, folds=5)
    assert np.array_equal(plain, plain2)  # the same folds and classifier for the plain hits
    assert both2.mean() > plain2.mean() + 0.03


def test_flip_hits_keep_a_group_in_one_fold():
    from graft.components.advise import flip_hits, probe

    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 60)
    groups = np.repeat(np.arange(40), 3)
    x = rng.normal(size=(120, 8)) + y[:, None]
    plain, _ = flip_hits(x, x, y, folds=4, groups=groups)
    # the plain hits are advise's probe's, fold for fold
    assert np.array_equal(plain, probe(x, y, 4, groups=groups))


def test_mirror_features_are_stored_apart_and_never_read_for_plain_images(tmp_path):
    from graft.components import data as gdata
    from graft.components import features as gfeat

    plain = gfeat.FeatureStore(str(tmp_path), "fp", 32, gdata.SQUASH)
    mirror = gfeat.FeatureStore(str(tmp_path), "fp", 32, gdata.SQUASH, mirror=True)
    assert plain.folder("l") != mirror.folder("l") and mirror.folder("l").endswith("32-mirror/l")
    with pytest.raises(ValueError, match="mirrored"):
        gfeat.split_features(
            str(tmp_path), "train", ["l"], extractor=None, store=mirror, mirror=False
        )
