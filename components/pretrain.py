"""Pretrain the demo base: the embedded default has no ImageNet weights offline.

Trains mobilenet_v2 (alpha 0.35, 64 px) from scratch on the generated *source* task,
whose classes are disjoint from the demo's target classes, and saves the base's weights.
The file is committed under configs/ with its checksum; this is the exact recipe.
With `cut_at`, only the base up to that layer trains (the rest stays at its initial weights):
the tests' shallow base, graft/assets/demo_base_shallow.weights.h5, read with base.cut_at at
that layer, a third of the whole base's CPU per model.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from graft.components import demo_data
from graft.components.model import BackbonePreprocess, cut_base
from graft.core.log import log

__all__ = [
    "RECIPE",
    "pretrain_demo_base",
]

RECIPE = {
    "classes": 6,
    "per_class": 500,
    "size": 64,
    "seed": 1,
    "alpha": 0.35,
    "epochs": 24,
    "batch_size": 64,
    "learning_rate": 2e-3,
    "cut_at": None,  # a layer: pretrain only the base up to it (the tests' shallow base)
}


def _load_folder(root: str, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    classes = sorted(os.listdir(root))
    xs, ys = [], []
    for i, c in enumerate(classes):
        for f in sorted(os.listdir(os.path.join(root, c))):
            img = tf.io.decode_jpeg(tf.io.read_file(os.path.join(root, c, f)), channels=3)
            xs.append(tf.image.resize(img, [size, size]).numpy())
            ys.append(i)
    return np.stack(xs).astype(np.float32), np.array(ys), classes


def pretrain_demo_base(out: str, recipe: dict | None = None) -> dict:
    """Train the demo base on the source task and save its weights, with a JSON of provenance.

    Args:
        out: the .weights.h5 path to write; `out + ".json"` gets the provenance.
        recipe: keys of RECIPE to override (tests train a smaller one).

    Returns:
        The provenance written beside the weights: sha256, size, source classes, validation
        accuracy, seconds, the recipe and the command that reproduces it.
    """
    r = {**RECIPE, **(recipe or {})}
    keras.utils.set_random_seed(r["seed"])
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        demo_data.generate(
            tmp,
            classes=r["classes"],
            per_class=r["per_class"],
            size=r["size"],
            seed=r["seed"],
            task="source",
        )
        x, y, classes = _load_folder(tmp, r["size"])
    perm = np.random.default_rng(r["seed"]).permutation(len(x))
    x, y = x[perm], y[perm]
    n_val = len(x) // 10
    xv, yv, x, y = x[:n_val], y[:n_val], x[n_val:], y[n_val:]
    base = keras.applications.MobileNetV2(
        include_top=False, weights=None, alpha=r["alpha"], input_shape=(r["size"], r["size"], 3)
    )
    for layer in base.layers:  # Keras' 0.999 is tuned for ImageNet-length runs; this run is short
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    inp = keras.Input((r["size"], r["size"], 3))
    h = BackbonePreprocess("mobilenet_v2")(inp)
    trained = cut_base(base, r["cut_at"]) if r["cut_at"] else base  # later layers: left at init
    h = keras.layers.GlobalAveragePooling2D()(trained(h))
    out_layer = keras.layers.Dense(len(classes), activation="softmax")(keras.layers.Dropout(0.3)(h))
    model = keras.Model(inp, out_layer)
    steps = r["epochs"] * int(np.ceil(len(x) / r["batch_size"]))
    model.compile(
        keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(r["learning_rate"], steps)),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )

    def dihedral(img, label):  # the shapes' classes do not change under flips and quarter turns
        img = tf.image.rot90(img, tf.random.uniform([], 0, 4, tf.int32))
        return tf.image.random_flip_left_right(img), label

    train_ds = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(len(x), seed=r["seed"])
        .map(dihedral, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(r["batch_size"])
        .prefetch(2)
    )
    hist = model.fit(train_ds, epochs=r["epochs"], validation_data=(xv, yv), verbose=2)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    base.save_weights(out)
    digest = hashlib.sha256(open(out, "rb").read()).hexdigest()
    info = {
        "file": os.path.basename(out),
        "sha256": digest,
        "bytes": os.path.getsize(out),
        "source_classes": classes,
        "val_accuracy": float(hist.history["val_accuracy"][-1]),
        "seconds": round(time.time() - t0, 1),
        "recipe": r,
        "command": f"graft pretrain-demo-base --out graft/assets/{os.path.basename(out)}"
        + (f" --cut-at {r['cut_at']}" if r["cut_at"] else "")
        + "  (make pretrain-demo-base writes both demo bases)",
    }
    with open(out + ".json", "w") as f:
        json.dump(info, f, indent=2)
    log(
        f"pretrain: base saved to {out} ({info['bytes']} bytes, sha256 {digest[:12]}), "
        f"source val_accuracy {info['val_accuracy']:.3f}",
        level="ok",
    )
    return info
