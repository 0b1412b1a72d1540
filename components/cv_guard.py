"""The fine-tune guard's evidence on small data: k-fold cross-validation of the fine-tuning.

Why: below ~1,000 training images the val split holds a few dozen to a few hundred images,
and a fine-tuning gain measured on it cannot be told from noise (a 38-image val split once
picked a model 0.10 worse on test). Here the whole recipe, a new head on the frozen base and
then the same fine-tuning, is re-run k times, each time without one fold of the train split,
and that fold scores both models. Every training image is then scored once by a head-only
and a fine-tuned model that never saw it; with the val split's paired scores of the real
models, the guard's paired interval rests on train + val images instead of val alone.

The fold heads start from the head stage's layers, re-initialised, and train on pooled
features (the base is frozen in that stage, so this is the same model, only faster) for as
many epochs as the head stage ran; a head.normalize layer keeps the statistics of the whole
train split (unsupervised, so no label leaks). Each fold's fine-tuning runs the epochs the
real one kept (its best epoch under early stopping) on the same rate schedule. Cost: k more
fine-tunings on (k-1)/k of the data; a killed stage resumes at the next unfinished fold.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedKFold

from graft.components import data as gdata
from graft.components import features as gfeat
from graft.components import layerwise as glayer
from graft.components import model as gmodel
from graft.components.fitting import (
    class_weights,
    load_model,
    make_optimizer,
    reinitialise,
    scores_on,
)
from graft.core.config import AugmentConfig, FineTuneConfig, TrainHeadConfig
from graft.core.log import log

__all__ = ["FOLDS_FILE", "fold_count", "fold_evidence"]

FOLDS_FILE = "guard_folds.json"


def fold_count(labels: np.ndarray, folds: int) -> int:
    """k, lowered to the smallest class's count (each fold needs every class); 0 below 2.

    Args:
        labels: the train split's class indices.
        folds: the k asked for (`fine_tune.guard_folds`).

    Returns:
        The k to run, or 0 when cross-validation cannot run (a class with under 2 images).
    """
    counts = np.bincount(labels) if len(labels) else np.zeros(0, int)
    counts = counts[counts > 0]
    k = min(folds, int(counts.min())) if len(counts) else 0
    return k if k >= 2 else 0


def _train_fold_head(model, x, y, head_cfg: TrainHeadConfig, epochs: int, cw, seed: int):
    head = gmodel.head_of(model)
    reinitialise(head, seed)
    trainer = gmodel.pooled_head(head, x.shape[1])
    gmodel.compile_for_fit(
        trainer, make_optimizer(head_cfg.optimizer, head_cfg.learning_rate), metrics=False
    )
    trainer.fit(x, y, batch_size=head_cfg.batch_size, epochs=epochs, class_weight=cw, verbose=0)


def _fold_datasets(recipe: _Recipe, seed: int, others: set[str], held: set[str]):
    """The fold's training images (shuffled, augmented) and its held-out images (in order)."""
    examples_dir, size, cfg = recipe.examples_dir, recipe.image_size, recipe.cfg
    exclude_train, geometry = recipe.exclude_train, recipe.geometry
    train_ds = gdata.image_dataset(
        examples_dir,
        "train",
        size,
        cfg.batch_size,
        shuffle=True,
        augment=recipe.augment if cfg.augment else None,
        seed=seed,
        exclude_sha256=exclude_train | held,
        deterministic=recipe.deterministic,  # as the real fine-tuning read its images
        geometry=geometry,
    )
    held_ds = gdata.image_dataset(
        examples_dir,
        "train",
        size,
        cfg.batch_size,
        exclude_sha256=exclude_train | others,
        geometry=geometry,
    )
    return train_ds, held_ds


@dataclass
class _Recipe:
    """What each fold re-runs: the head stage and the fine-tuning as the real stages ran."""

    examples_dir: str
    head_model_path: str
    cfg: FineTuneConfig
    head_cfg: TrainHeadConfig
    head_epochs: int
    tune_epochs: int
    augment: AugmentConfig
    image_size: int
    exclude_train: set[str]
    seed: int
    jit: bool
    geometry: gdata.Geometry
    weights_by_class: dict | None = None  # per class index, for the head and the fine-tune
    deterministic: bool = False  # train.deterministic: the folds read as the real stage did


def fold_evidence(
    examples_dir: str,
    head_model_path: str,
    out_dir: str,
    *,
    cfg: FineTuneConfig,
    head_cfg: TrainHeadConfig,
    head_epochs: int,
    tune_epochs: int,
    augment: AugmentConfig,
    image_size: int,
    exclude_train: set[str],
    seed: int,
    jit: bool = False,
    feature_store: dict | None = None,
    geometry: gdata.Geometry = gdata.SQUASH,
    deterministic: bool = False,
) -> dict | None:
    """Out-of-fold per-image hits of the head-only and the fine-tuned recipe over the train
    split: {"head": [...], "tuned": [...], "folds": [...], "k": k}; None when a class has
    fewer than 2 images. `cfg` carries the rate the real fine-tuning used; `feature_store`
    ({"root", "fingerprint"}, from the head stage) serves the features it already computed.

    Args:
        examples_dir: the ingest step's output.
        head_model_path: the head stage's model, whose layers the fold heads start from.
        out_dir: where guard_folds.json keeps the finished folds (a rerun resumes from it).
        cfg: the `fine_tune` section, with the rate the real fine-tuning used.
        head_cfg: the `train_head` section.
        head_epochs: the epochs the head stage ran.
        tune_epochs: the epochs the real fine-tuning kept (its best epoch).
        augment: the augmentation the real fine-tuning used.
        image_size: the model's input size in pixels.
        exclude_train: sha256 of train images left out (validate's exclusions).
        seed: seeds the fold split.
        jit: compile the training steps with XLA.
        feature_store: {"root", "fingerprint"} of the head stage's stored features, or None.
        geometry: how images are fitted to the input size.
        deterministic: train.deterministic (ordered, sha256-ordered reads; see data.py).

    Returns:
        {"k", "head", "tuned", "folds", "seconds", "features_computed"}: the per-image
        out-of-fold hits of both recipes and each fold's summary; None when k < 2.
    """
    t0 = time.time()
    model = load_model(head_model_path)
    feats, layers = _train_features(
        model, examples_dir, feature_store, image_size, geometry, exclude_train
    )
    x, y, shas = feats.joined(layers), feats.y, np.array(feats.sha256)
    k = fold_count(y, cfg.guard_folds)
    if not k:
        return None
    path = os.path.join(out_dir, FOLDS_FILE)
    done = []
    if os.path.exists(path):
        with open(path) as f:
            done = json.load(f)["folds"]
    splits = StratifiedKFold(k, shuffle=True, random_state=seed).split(x, y)
    cw = class_weights(examples_dir, model.output_shape[-1], head_cfg.class_weight, exclude_train)
    recipe = _Recipe(
        examples_dir, head_model_path, cfg, head_cfg, head_epochs, tune_epochs, augment,
        image_size, exclude_train, seed, jit, geometry, weights_by_class=cw,
        deterministic=deterministic,
    )  # fmt: skip
    log(
        f"fine_tune: guard: {k}-fold cross-validation on {len(y)} training images (< "
        f"{cfg.guard_cv_below}): {k} more head + fine-tuning runs of {tune_epochs} epoch(s)"
    )
    for i, (tr, te) in enumerate(splits):
        if i < len(done):
            continue
        done.append(_run_fold(recipe, i, x, y, shas, tr, te))
        with open(path + ".tmp", "w") as f:
            json.dump({"k": k, "folds": done}, f)
        os.replace(path + ".tmp", path)
        log(
            f"fine_tune: guard fold {i + 1}/{k}: {len(te)} held-out images, head "
            f"{done[-1]['head_accuracy']:.3f} -> fine-tuned {done[-1]['tuned_accuracy']:.3f} "
            f"({done[-1]['seconds']:.0f}s)"
        )
    return {
        "k": k,
        "head": np.concatenate([np.array(d["head"], bool) for d in done]),
        "tuned": np.concatenate([np.array(d["tuned"], bool) for d in done]),
        "folds": [{key: v for key, v in d.items() if key not in ("head", "tuned")} for d in done],
        "seconds": round(time.time() - t0, 1),
        "features_computed": feats.computed,  # the rest came from the store
    }


def _train_features(model, examples_dir, feature_store, image_size, geometry, exclude_train):
    """The train split's pooled features of the head's input layers (feature_layers), through
    the head stage's store when it kept one; and those layers' names."""
    base = gmodel.base_of(model)
    layers = gmodel.feature_layers(base)
    extractor = gfeat.pooled_extractor(base, model.get_layer("preprocess"), layers)
    store = None
    if feature_store:
        root, fingerprint = feature_store["root"], feature_store["fingerprint"]
        store = gfeat.FeatureStore(root, fingerprint, image_size, geometry)
    feats = gfeat.split_features(
        examples_dir,
        "train",
        layers,
        extractor=extractor,
        store=store,
        exclude=exclude_train,
        geometry=geometry,
    )
    return feats, layers


def _run_fold(recipe: _Recipe, i: int, x, y, shas, tr, te) -> dict:
    """Fold i: a fresh head and the fine-tuning without its images, both scored on them."""
    cfg, seed = recipe.cfg, recipe.seed
    t_fold = time.time()
    model = load_model(recipe.head_model_path)
    _train_fold_head(
        model, x[tr], y[tr], recipe.head_cfg, recipe.head_epochs, recipe.weights_by_class, seed + i
    )
    held, others = set(shas[te].tolist()), set(shas[tr].tolist())
    train_ds, held_ds = _fold_datasets(recipe, seed + i, others, held)
    _, _, head_hits = scores_on(model, held_ds)
    info = gmodel.unfreeze(model, cfg.unfreeze)
    steps = max(1, int(train_ds.cardinality()))
    gmodel.compile_for_fit(
        model, glayer.fine_tune_optimizer(cfg, steps), metrics=False, jit=recipe.jit
    )
    cbs = (
        [glayer.StageRates(glayer.depths(model), cfg.layer_lr_decay, cfg.unfreeze.gradual_epochs)]
        if cfg.staged
        else []
    )
    model.fit(
        train_ds,
        epochs=recipe.tune_epochs,
        class_weight=recipe.weights_by_class,
        callbacks=cbs,
        verbose=0,
    )
    _, _, tuned_hits = scores_on(model, held_ds)
    return {
        "fold": i + 1,
        "n": len(head_hits),  # a photo filed twice in train counts twice
        "head_accuracy": float(head_hits.mean()),
        "tuned_accuracy": float(tuned_hits.mean()),
        "head": head_hits.astype(int).tolist(),
        "tuned": tuned_hits.astype(int).tolist(),
        "unfrozen_layers": info.get("unfrozen_layers"),
        "seconds": round(time.time() - t_fold, 1),
    }
