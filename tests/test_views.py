"""Augmented views for the frozen head (train_head.feature_views): the views, their store,
advise's k-fold probe of K views and its plan, and a run that trains on them."""

import hashlib
import json
import os

import numpy as np
import pytest
from conftest import ingest_at, tiny_config
from conftest import step_summary as _summary


def _png(seed: int, size: int = 40) -> bytes:
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)
    img[:, : size // 2] //= 3  # a dark left half: a flip moves it
    return tf.io.encode_png(img).numpy()


def _view(data: bytes, index: int, **augment):
    import tensorflow as tf

    from graft.components import data as gdata
    from graft.components import views as gviews

    sha = hashlib.sha256(data).hexdigest()
    view = gviews.View(index, gviews.ViewAugment(**augment))
    return gviews.view_pixels(tf.constant(data), tf.constant(sha), 32, gdata.SQUASH, view).numpy()


def test_views_are_deterministic_in_range_and_differ_from_the_image_and_each_other():
    import tensorflow as tf

    from graft.components import data as gdata

    data = _png(0)
    plain = gdata.decode_and_resize(tf.constant(data), 32).numpy()
    one, again, two = _view(data, 1), _view(data, 1), _view(data, 2)
    assert one.shape == plain.shape == (32, 32, 3) and one.dtype == np.float32
    assert np.array_equal(one, again)  # view 1 is the same pixels every call
    assert 0 <= one.min() and one.max() <= 255
    assert np.abs(one - plain).mean() > 5 and np.abs(one - two).mean() > 5
    other = _png(1)  # another image's view 1 is drawn with its own seed (its sha256)
    assert not np.array_equal(_view(other, 1), gdata.decode_and_resize(tf.constant(other), 32))
    # with every augmentation off, a view is the image (up to the resize from the larger side)
    same = _view(data, 1, flip=False, min_area=1.0, brightness=0, contrast=0, saturation=0)
    assert np.abs(same - plain).mean() < 3


def test_view_settings_and_index_key_the_store_folder():
    from graft.components import data as gdata
    from graft.components import features as gfeat
    from graft.components import views as gviews

    def folder(view):
        return gfeat.FeatureStore("/s", "fp", 32, gdata.SQUASH, view=view).folder("l")

    plain = folder(None)
    v1, v2 = folder(gviews.View(1)), folder(gviews.View(2))
    milder = folder(gviews.View(1, gviews.ViewAugment(min_area=0.8)))
    assert len({plain, v1, v2, milder}) == 4 and "view1-v1-f1-a0.5-" in v1 and "-a0.8-" in milder
    with pytest.raises(ValueError, match="view index from 1"):
        gviews.View(0)


def test_the_store_reuses_views_and_other_settings_compute_anew(tmp_path, tiny_data):
    from graft.components import data as gdata
    from graft.components import features as gfeat
    from graft.components import model as gmodel
    from graft.components import views as gviews
    from graft.core.config import BaseConfig

    examples = tmp_path / "examples"
    ingest_at(tiny_data, examples)
    base = gmodel.build_base(BaseConfig(weights="demo", kwargs={"alpha": 0.35}), 32)
    layer = base.layers[-1].name
    extractor = gfeat.pooled_extractor(base, gmodel.BackbonePreprocess("mobilenet_v2"), [layer])

    def views(augment=gviews.DEFAULT_AUGMENT):  # a fresh store object: as a new process reads it
        store = gfeat.FeatureStore(str(tmp_path / "store"), base.graft_fingerprint, 32)
        return gfeat.split_view_features(
            str(examples), "train", [layer], 2, store=store, extractor=extractor,
            augment=augment,
        )  # fmt: skip

    n = len(gfeat.split_rows(str(examples), "train"))
    first = views()
    assert [(f.computed, f.reused) for f in first] == [(n, 0), (n, 0)]
    before = gfeat.FORWARD_IMAGES["count"]
    again = views()
    assert [(f.computed, f.reused) for f in again] == [(0, n), (0, n)]
    assert gfeat.FORWARD_IMAGES["count"] == before  # a re-run runs the base over nothing
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a.x[layer], b.x[layer]) and a.sha256 == b.sha256
    assert not np.allclose(first[0].x[layer], first[1].x[layer])  # two views, two features
    milder = views(gviews.ViewAugment(min_area=0.8))
    assert [(f.computed, f.reused) for f in milder] == [(n, 0), (n, 0)]  # never stale views
    plain_store = gfeat.FeatureStore(str(tmp_path / "store"), base.graft_fingerprint, 32)
    plain = gfeat.split_features(
        str(examples), "train", [layer], extractor=extractor, store=plain_store
    )
    assert plain.computed == n  # the views' folders never answer for the plain images
    assert not np.allclose(plain.x[layer], first[0].x[layer])
    with pytest.raises(ValueError, match="view1"):
        gfeat.split_features(
            str(examples), "train", [layer], extractor=extractor, store=plain_store,
            view=gviews.View(1), geometry=gdata.SQUASH,
        )  # fmt: skip


def test_a_folds_training_rows_hold_its_images_and_their_views_never_a_held_out_ones():
    from graft.components.views import cv_splits, view_training_rows

    n, k = 30, 3
    y = np.repeat([0, 1, 2], 10)
    for fit, held in cv_splits(y, 5):
        rows = view_training_rows(fit, n, k)
        assert len(rows) == len(fit) * (k + 1)
        images = rows % n  # row r of [images; view 1; ...; view k] is of image r % n
        assert set(images) == set(fit) and not set(images) & set(held)
        assert sorted(rows // n) == sorted(np.repeat(np.arange(k + 1), len(fit)))


def test_views_hits_would_show_a_leak_and_find_the_gain_of_real_views():
    from graft.components.advise import probe
    from graft.components.views import views_hits

    rng = np.random.default_rng(0)
    # random labels: nothing to learn, so only a held-out image's own copy in its fold's
    # training rows (a leak) would let the probe score above chance (a leaky fold scored 1.0)
    n, d = 60, 100
    y = np.repeat([0, 1], n // 2)
    x = rng.normal(size=(n, d))
    assert views_hits(x, [x.copy(), x.copy()], y, folds=5).mean() < 0.75
    # a weak signal and views with their own noise: more rows of the class, better hits
    n, d = 300, 40
    y = np.repeat([0, 1], n // 2)
    signal = np.outer(y * 2 - 1, np.ones(d)) * 0.12

    def noisy():
        return signal + rng.normal(size=(n, d))

    x = noisy()
    plain = views_hits(x, [], y, folds=5)
    assert np.array_equal(plain, probe(x, y, 5))  # no views: advise's probe, fold for fold
    assert views_hits(x, [noisy() for _ in range(4)], y, folds=5).mean() > plain.mean() + 0.03


def _views(*cands, n_train=300):
    def cand(k, diff, lo90):
        gain = {"difference": diff, "low": lo90 - 0.01, "high": diff + 0.02, "low90": lo90}
        return {"views": k, "accuracy": 0.8 + diff, "gain": gain, "probe_seconds": 2.0,
                "train_seconds": 3.0 * k, "gain_per_minute": diff / (0.05 * k)}  # fmt: skip

    return {"size": 224, "layer": "out_relu", "resize": "crop", "n": 300, "n_train": n_train,
            "folds": 5, "plain": 0.8, "candidates": [cand(*c) for c in cands]}  # fmt: skip


def test_plan_views_picks_the_smallest_k_beyond_the_noise():
    from graft.components.advise import Plan, plan_views

    def decide(views):
        p = Plan("auto", {}, {}, [])
        plan_views(p, views)
        d = next(x for x in p.decisions if x.what == "augmented views")
        chosen = p.overrides["train_head.feature_views"]
        assert d.choice == (chosen or "none")
        return chosen, d.reason

    chosen, why = decide(_views((2, 0.03, 0.004)))
    assert chosen == 2 and "2 views 0.830 (paired +0.030" in why and "90% bound +0.004" in why
    assert "~6s for the 300 training images" in why and "the fewest that are" in why
    assert decide(_views((2, 0.01, -0.004), (4, 0.03, 0.002)))[0] == 4
    chosen, why = decide(_views((2, 0.01, -0.004), (4, 0.012, -0.001)))
    assert chosen == 0 and "no K beyond the noise" in why
    assert decide(_views((2, -0.02, -0.04)))[0] == 0  # worse with views: none


def test_views_key_is_strict_and_needs_cached_features():
    from graft.core.config import ConfigError, parse_config

    def cfg(**th):
        return {"data": {"path": "/x"}, "train_head": th}

    assert parse_config(cfg(feature_views=4)).train_head.feature_views == 4
    assert parse_config(cfg()).train_head.feature_views == 0
    for bad in ({"feature_views": -1}, {"feature_views": "2"}, {"feature_views": 17}):
        with pytest.raises(ConfigError, match="feature_views"):
            parse_config(cfg(**bad))
    for other in ({"augment": True}, {"feature_cache": "off"}):
        with pytest.raises(ConfigError, match="train_head.feature_views needs cached features"):
            parse_config(cfg(feature_views=2, **other))


@pytest.mark.slow
def test_a_run_with_views_trains_on_them_and_a_rerun_computes_none(tmp_path, tiny_data):
    from graft.core.config import parse_config
    from graft.pipeline.runner import run_pipeline

    cfg = tiny_config(tmp_path, tiny_data, train_head__feature_views=2)
    run = run_pipeline(parse_config(cfg))
    assert run["status"] == "succeeded"
    head = _summary(run, "train_head")
    n_train = head["features_computed"] - _n_val(run)
    assert head["view_rows_computed"] == 2 * n_train and head["view_rows_reused"] == 0
    res = json.load(open(os.path.join(run["steps"]["train_head"]["output"], "result.json")))
    assert res["extra"]["features"]["views"] == 2
    assert _summary(run, "push")["pushed"] is True  # exported and pushed like any head
    again = tiny_config(tmp_path, tiny_data, train_head__feature_views=2,
                        train_head__learning_rate=0.003)  # fmt: skip
    rerun = run_pipeline(parse_config(again), until="train_head")
    head2 = _summary(rerun, "train_head")
    assert rerun["steps"]["train_head"]["status"] == "ran"
    assert head2["view_rows_computed"] == 0 and head2["view_rows_reused"] == 2 * n_train


def _n_val(run) -> int:
    from graft.components.features import split_rows

    return len(split_rows(run["steps"]["ingest"]["output"], "val"))


def test_views_are_not_probed_on_large_data_or_when_your_settings_train_on_images():
    from graft.components.advise import Evidence, Plan, _probe_views

    ev = Evidence("b", 48, 75, 15, 3, 23, 27, 48, [], [], [], [], 100.0)
    for keep, cell, said in (
        ({"train_head.augment": True}, "small", "kept your setting train_head.augment=true"),
        ({"train_head.feature_cache": "off"}, "small", "your setting train_head.feature_cache"),
        ({}, "large", "views are probed on small data only"),
    ):
        p = Plan("auto", {"size": cell}, {}, [])
        # no data, no base: a probe that ran would fail
        _probe_views(p, ev, "/nowhere", None, keep=keep, size=48, cut=None, geometry=None,
                     base_cfg=None, store_root="", folds=3, max_probe_images=50)  # fmt: skip
        assert ev.views is None and "train_head.feature_views" not in p.overrides
        (d,) = p.decisions
        assert d.choice == "not probed" and said in d.reason
