"""What both training stages and the cross-validated guard compile, fit and score with."""

from __future__ import annotations

import json
import math
import os
from collections import Counter

import keras
import numpy as np
import tensorflow as tf

from graft.components import data as gdata
from graft.components import model as _registers_layers  # noqa: F401 (BackbonePreprocess)
from graft.components.manifest import read_manifest
from graft.core.config import FineTuneConfig

__all__ = [
    "MODEL",
    "RESULT",
    "class_weights",
    "hits_and_losses",
    "load_model",
    "make_optimizer",
    "read_history",
    "refit_epochs",
    "reinitialise",
    "schedule",
    "scores_on",
]

RESULT = "result.json"  # a training stage's StageResult, written last: the stage finished
MODEL = "model.keras"

STOCK_OPTIMIZERS = {
    "adam": keras.optimizers.Adam,
    "adamw": keras.optimizers.AdamW,
    "sgd": keras.optimizers.SGD,
    "rmsprop": keras.optimizers.RMSprop,
}


def make_optimizer(
    name: str, lr, momentum: float = 0.9, classes: dict | None = None
) -> keras.optimizers.Optimizer:
    """`name` from `classes` (default: Keras' own); momentum applies to SGD only.

    Args:
        name: the optimizer's name, e.g. "adam" or "sgd".
        lr: a learning rate or a Keras schedule.
        momentum: SGD's momentum.
        classes: optimizer classes by name, to use instead of Keras' own.

    Returns:
        A new optimizer.
    """
    cls = (classes or STOCK_OPTIMIZERS)[name]
    return cls(lr, momentum=momentum) if name == "sgd" else cls(lr)


def class_weights(
    examples_dir: str, num_classes: int, mode: str, exclude: set[str] | None = None
) -> dict[int, float] | None:
    """n / (C * n_c) per class, from the ingest manifest; None when off or balanced.

    Args:
        examples_dir: the ingest step's output (its manifest and labels).
        num_classes: how many classes the model has.
        mode: train_head.class_weight: "none" turns weights off; "balanced" and "auto" (what
            it means where advise planned nothing) weigh the classes.
        exclude: sha256 of the train images validate left out of training: not counted, since
            the model never sees them.

    Returns:
        Weight per class index, or None.
    """
    if mode == "none":
        return None
    labels = gdata.read_labels(examples_dir)
    skip = exclude or set()
    counts = Counter(
        m["label"]
        for m in read_manifest(examples_dir)
        if m["split"] == "train" and m["sha256"] not in skip
    )
    n = sum(counts.values())
    w = {i: n / (num_classes * max(1, counts[lab])) for i, lab in enumerate(labels)}
    return None if max(w.values()) / min(w.values()) < 1.05 else w


def hits_and_losses(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image: top class == label, and cross-entropy (probabilities clipped at 1e-7).

    Args:
        p: probabilities, one row per image.
        y: the label index per image.

    Returns:
        (hits, losses): a bool and a float array, one entry per image.
    """
    p = p.astype(np.float64)
    return np.argmax(p, 1) == y, -np.log(np.clip(p[np.arange(len(y)), y], 1e-7, 1.0))


def schedule(cfg: FineTuneConfig, steps_per_epoch: int):
    """The fine-tune learning rate: warmup, then cosine decay, as the config asks.

    Args:
        cfg: the fine_tune config (learning_rate, epochs, warmup_epochs, cosine_decay).
        steps_per_epoch: optimizer steps in one epoch.

    Returns:
        A Keras CosineDecay schedule, or the constant learning rate when neither warmup nor
        decay is on.
    """
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = int(cfg.warmup_epochs * steps_per_epoch)
    if not cfg.cosine_decay and not warm:
        return cfg.learning_rate
    return keras.optimizers.schedules.CosineDecay(
        0.0 if warm else cfg.learning_rate,
        decay_steps=max(1, total - warm) if cfg.cosine_decay else 10**9,
        warmup_target=cfg.learning_rate if warm else None,
        warmup_steps=warm,
    )


def load_model(path: str) -> keras.Model:
    """A saved model.keras, uncompiled: callers compile it for their own stage or only predict.

    Args:
        path: the .keras file.

    Returns:
        The Keras model.
    """
    # Graft's own layers registered when this module imported components.model: a process
    # that imported nothing else of Graft would otherwise get "Could not locate class"
    return keras.models.load_model(path, compile=False)


def scores_on(model: keras.Model, ds: tf.data.Dataset) -> tuple[float, float, np.ndarray]:
    """Accuracy, mean cross-entropy and per-image hits (in order) of `ds`, in one pass.

    Args:
        model: a model giving class probabilities.
        ds: batches of (images, labels), in a fixed order.

    Returns:
        (accuracy, loss, hits); (nan, nan, empty) for an empty dataset.
    """
    fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    hits, losses = [], []
    for x, y in ds:
        h, loss = hits_and_losses(fn(x).numpy(), y.numpy())
        hits.append(h)
        losses.append(loss)
    if not hits:
        return float("nan"), float("nan"), np.zeros(0, bool)
    hit = np.concatenate(hits)
    return float(hit.mean()), float(np.concatenate(losses).mean()), hit


def read_history(out_dir: str) -> list[dict]:
    """A training stage's per-epoch log, one row per epoch: a resumed epoch's row replaces the
    row its killed attempt wrote.

    Args:
        out_dir: the stage's output folder (holding history.jsonl).

    Returns:
        The rows in epoch order; [] when the stage logged no epoch.
    """
    path = os.path.join(out_dir, "history.jsonl")
    if not os.path.exists(path):
        return []
    rows = []
    for line in open(path):
        try:
            rows.append(json.loads(line))
        except ValueError:  # the last line of an epoch a kill cut short: that epoch re-runs
            continue
    by_epoch = {r["epoch"]: r for r in rows}  # a resumed epoch overwrites its killed attempt
    return [by_epoch[e] for e in sorted(by_epoch)]


def reinitialise(head: keras.Model, seed: int) -> None:
    """Fresh weights for every layer with an initializer (Dense), drawn after seeding with
    `seed`; Normalization keeps its adapted statistics, Dropout has none.

    Args:
        head: the head (or any model) whose layers are re-initialised in place.
        seed: the seed set before drawing.
    """
    keras.utils.set_random_seed(seed)
    for layer in head.layers:
        for attr in ("kernel", "bias"):
            var = getattr(layer, attr, None)
            init = getattr(layer, f"{attr}_initializer", None)
            if var is not None and init is not None:
                var.assign(init(tuple(var.shape), dtype=var.dtype))


def refit_epochs(history: list[dict], patience: int) -> int:
    """The epochs behind the head's saved weights: with early stopping (patience > 0) Keras
    restores the weights of the first epoch with the lowest val_loss, else the last epoch's.

    Args:
        history: the head stage's per-epoch rows (read_history).
        patience: train_head.patience; 0: no early stopping.

    Returns:
        How many epochs the saved weights trained for; 0 for no history.
    """
    if not history:
        return 0
    if not patience:
        return len(history)
    losses = [row.get("val_loss", math.inf) for row in history]
    return int(np.argmin(losses)) + 1
