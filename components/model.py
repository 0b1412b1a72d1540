"""Backbone + head: build, load weights, find where to unfreeze, describe a base.

The model takes raw 0..255 pixels; the backbone's own preprocess_input is its first layer
(BackbonePreprocess), so nothing outside the model needs to know which backbone it is.
Structure: pixels -> preprocess -> base(training=False) -> head (a Sequential whose first
layer is the global pooling). The bottleneck cache trains head.layers[1:] on pooled
features and writes them back into this same structure.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from graft.components.features import base_fingerprint
from graft.core.backbones import BACKBONES, Backbone, block_of
from graft.core.config import BaseConfig, HeadConfig, TrainConfig, UnfreezeConfig
from graft.core.log import log
from graft.core.paths import demo_weights, is_remote

__all__ = [
    "BackbonePreprocess",
    "backbone",
    "base_of",
    "build_base",
    "cut_base",
    "build_model",
    "chief_task",
    "choose_strategy",
    "compile_for_fit",
    "describe_base",
    "describe_strategy",
    "feature_extractor",
    "feature_layers",
    "feature_map_shapes",
    "feature_normalizer",
    "head_of",
    "is_chief",
    "label_order_scores",
    "multi_worker_keras",
    "plan_unfreeze",
    "pooled_head",
    "predict_scores",
    "scores",
    "set_precision",
    "stage_starts",
    "tap_base",
    "unfreeze",
    "unfreeze_text",
    "worker_count",
]


def scores(model: keras.Model, pixels, flip_average: bool = False):
    """The model's class scores as float32 in a graph; flip_average: the mean with the mirror image.

    The one definition of what a Graft model outputs: the exported signatures call it, and so
    does evaluation (through `predict_scores`), so the test metrics are the served model's.

    Args:
        model: a Graft model.
        pixels: a batch of 0..255 pixels.
        flip_average: average with the mirror image's scores.

    Returns:
        A float32 tensor of scores, [batch, classes].
    """
    out = tf.cast(model(pixels, training=False), tf.float32)
    if flip_average:
        out = (out + tf.cast(model(tf.reverse(pixels, axis=[2]), training=False), tf.float32)) / 2.0
    return out


def label_order_scores(outputs: dict):
    """A serving signature's scores in label order, from either output layout.

    Models exported since `probabilities` existed return it (label order) beside the sorted
    `scores`; older ones returned `scores` in label order. Baselines pushed before stay readable.

    Args:
        outputs: the signature's outputs, by name.

    Returns:
        The scores, one column per label in label order.
    """
    return outputs["probabilities"] if "probabilities" in outputs else outputs["scores"]


def predict_scores(model: keras.Model, pixels, flip_average: bool = False, batch_size: int = 64):
    """`scores` over a numpy array of 0..255 pixels, a batch at a time, via one traced function.

    Args:
        model: a Graft model.
        pixels: a numpy array [N, size, size, 3] of 0..255 pixels.
        flip_average: average with the mirror image's scores.
        batch_size: images per call.

    Returns:
        A numpy array of scores, [N, classes].
    """
    fn = tf.function(lambda x: scores(model, x, flip_average), reduce_retracing=True)
    return np.concatenate(
        [fn(pixels[i : i + batch_size]).numpy() for i in range(0, len(pixels), batch_size)]
    )


def backbone(name: str) -> Backbone:
    """The backbone table's entry for a base name: its constructor, preprocessing and blocks.

    Args:
        name: a base name, e.g. "mobilenet_v2".

    Returns:
        The core.backbones.Backbone.

    Raises:
        ValueError: an unknown name, with the valid ones.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone '{name}'; valid: {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name]


@keras.saving.register_keras_serializable(package="graft")
class BackbonePreprocess(keras.layers.Layer):
    """The backbone's preprocess_input as a layer, so it is saved inside the model."""

    def __init__(self, backbone_name: str, **kwargs):
        super().__init__(**kwargs)
        self.backbone_name = backbone_name
        mod = importlib.import_module(
            f"keras.applications.{backbone(backbone_name).preprocess_module}"
        )
        self._fn = mod.preprocess_input

    def call(self, x):
        return self._fn(tf.cast(x, self.compute_dtype))

    def get_config(self):
        return {**super().get_config(), "backbone_name": self.backbone_name}


def build_base(cfg: BaseConfig, size: int) -> keras.Model:
    """The keras.applications model without its top, with weights as configured.

    Args:
        cfg: the base config (name, weights, cut_at, kwargs).
        size: the input side.

    Returns:
        The frozen base, its full weights' fingerprint in `graft_fingerprint`.

    Raises:
        ValueError: size is below the backbone's minimum.
        FileNotFoundError: base.weights names a file that is not there.
        RuntimeError: the ImageNet weights cannot be loaded (offline).
    """
    b = backbone(cfg.name)
    if size < b.min_size:
        raise ValueError(f"data.image_size {size} is below {cfg.name}'s minimum {b.min_size}")
    ctor = getattr(keras.applications, b.constructor)
    kwargs = {**b.default_kwargs, **cfg.kwargs}
    weights = cfg.weights
    path = None
    if weights == "demo":
        path, weights = demo_weights(), None
    elif weights not in (None, "imagenet"):
        path = weights
        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(
                f"base.weights file not found: {path if is_remote(path) else os.path.abspath(path)}"
            )
        weights = None
    try:
        base = ctor(include_top=False, weights=weights, input_shape=(size, size, 3), **kwargs)
    except Exception as e:  # keras raises plain ValueError/Exception for bad sizes and downloads
        if weights == "imagenet":
            raise RuntimeError(
                f"could not load ImageNet weights for {cfg.name} ({e}). Offline? Put the file in "
                f"$KERAS_HOME/models/ or set base.weights to a local weights file."
            ) from e
        raise
    if path:
        base.load_weights(path)
        log(f"model: loaded base weights from {path}")
    fingerprint = base_fingerprint(base, cfg.name, kwargs)
    if cfg.cut_at:
        base = cut_base(base, cfg.cut_at)
    base.trainable = False
    base.graft_fingerprint = fingerprint  # of the full base: the feature store's key
    return base


def cut_base(base: keras.Model, layer: str) -> keras.Model:
    """The base up to `layer` (its output feeds the head): an earlier block's features.

    Args:
        base: the whole base (build_base's, before the cut).
        layer: the name of the layer whose output the cut base returns.

    Returns:
        A model from the base's inputs to that layer's output, sharing its layers.

    Raises:
        ValueError: no layer of that name (the message lists close names).
    """
    names = [lay.name for lay in base.layers]
    if layer not in names:
        near = [n for n in names if layer in n or n in layer][:5]
        raise ValueError(
            f"base.cut_at: no layer '{layer}' in {base.name}"
            + (f"; close: {', '.join(near)}" if near else "")
            + " (graft inspect-base lists them)"
        )
    return keras.Model(base.inputs, base.get_layer(layer).output, name=f"{base.name}_to_{layer}")


TAP_POOL = "tap_pool_"  # tap_pool_<i>__<layer>: the i-th pooled feature block of a tapped base
TAPS = "taps"  # the Concatenate layer a tapped base ends in


def tap_base(base: keras.Model, layers: list[str]) -> keras.Model:
    """The base with a multi-depth output (head.taps): its own output and each named earlier
    layer's, each globally pooled, concatenated into one feature vector (Head2Toe's idea: a
    head over several depths). One model: export serves it with the taps inside.

    Args:
        base: the (possibly cut) base.
        layers: layers of `base` to read beside its output.

    Returns:
        A keras.Model from the base's input to the pooled features, ending in a Concatenate
        named "taps" (feature_layers reads its blocks back, also from a saved model).

    Raises:
        ValueError: a layer is not in the base (or beyond its cut), or listed twice.
    """
    names = [lay.name for lay in base.layers]
    out, cut = names[-1], "_to_" in base.name  # cut_base's naming
    for layer in layers:
        if layer not in names:
            raise ValueError(
                f"head.taps: no layer '{layer}' in {base.name}"
                + (" (the base is cut: a tap must come before base.cut_at)" if cut else "")
                + " (graft inspect-base lists them)"
            )
    if len(set(layers)) != len(layers) or out in layers:
        raise ValueError(
            f"head.taps lists a layer twice or the base's own output ({out}): {layers}"
        )
    blocks = [
        keras.layers.GlobalAveragePooling2D(name=f"{TAP_POOL}{i}__{name}")(
            base.get_layer(name).output
        )
        for i, name in enumerate([out, *layers])
    ]
    joined = keras.layers.Concatenate(name=TAPS)(blocks)
    return keras.Model(base.inputs, joined, name=f"{base.name}_taps")


def feature_layers(base: keras.Model) -> list[str]:
    """The base's layers whose pooled outputs, concatenated in this order, are the head's
    input: its last layer, or a tapped base's blocks (its output first).

    Args:
        base: a base from build_base / tap_base, or base_of a loaded model.

    Returns:
        Layer names of `base`.
    """
    if base.layers[-1].name != TAPS:
        return [base.layers[-1].name]
    pooled = [lay.name for lay in base.layers if lay.name.startswith(TAP_POOL)]
    pooled.sort(key=lambda n: int(n[len(TAP_POOL) :].split("__", 1)[0]))
    return [n.split("__", 1)[1] for n in pooled]


def build_head(cfg: HeadConfig, num_classes: int) -> keras.Sequential:
    # a tapped base pools its own blocks: the head's pool is then the identity
    pool = keras.layers.Identity if cfg.taps else keras.layers.GlobalAveragePooling2D
    layers = [pool(name="pool")]
    if cfg.normalize:  # an inner layer's channels differ in scale by orders of magnitude
        # fitted once on the training features (train_head): no batch statistics, no
        # training mode, the same on every replica and in fine-tuning
        layers.append(keras.layers.Normalization(name="normalize"))
    layers.append(keras.layers.Dropout(cfg.dropout, name="dropout"))
    if cfg.fc_size:
        layers.append(keras.layers.Dense(cfg.fc_size, activation="relu", name="fc"))
    layers.append(
        keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")
    )
    return keras.Sequential(layers, name="head")


def build_model(
    base_cfg: BaseConfig, head_cfg: HeadConfig, num_classes: int, size: int
) -> keras.Model:
    """pixels 0..255 -> preprocess -> base (inference-mode BatchNorm) -> head: a Graft model.

    Args:
        base_cfg: the base config (name, weights, cut_at, kwargs).
        head_cfg: the head config.
        num_classes: the head's outputs.
        size: the input side.

    Returns:
        The model, its base frozen.
    """
    base = build_base(base_cfg, size)
    if head_cfg.taps:
        fingerprint = base.graft_fingerprint
        base = tap_base(base, head_cfg.taps)
        base.trainable = False
        base.graft_fingerprint = fingerprint
    head = build_head(head_cfg, num_classes)
    inputs = keras.Input((size, size, 3), name="pixels")
    x = BackbonePreprocess(base_cfg.name, name="preprocess")(inputs)
    x = base(x, training=False)  # BatchNorm stays in inference mode, also when unfrozen
    outputs = head(x)
    return keras.Model(inputs, outputs, name=f"graft_{base_cfg.name}")


def base_of(model: keras.Model) -> keras.Model:
    """The base inside a Graft model: its one nested model that is not the head.

    Args:
        model: a model build_model made (or loaded from model.keras).

    Returns:
        The base model.
    """
    return next(
        layer for layer in model.layers if isinstance(layer, keras.Model) and layer.name != "head"
    )


def head_of(model: keras.Model) -> keras.Sequential:
    """The head inside a Graft model: its layer named "head".

    Args:
        model: a model build_model made (or loaded from model.keras).

    Returns:
        The head.
    """
    return model.get_layer("head")


def feature_normalizer(model: keras.Model):
    """The head's Normalization layer (head.normalize), or None.

    Args:
        model: a Graft model.

    Returns:
        The Normalization layer, or None.
    """
    layers = [layer for layer in head_of(model).layers if layer.name == "normalize"]
    return layers[0] if layers else None


def pooled_head(head: keras.Sequential, feature_dim: int) -> keras.Model:
    """head without its pooling layer, sharing its layers: trained on cached features.

    Args:
        head: the Graft model's head.
        feature_dim: the pooled features' width.

    Returns:
        A keras.Model from pooled features to probabilities.
    """
    inputs = keras.Input((feature_dim,), name="features")
    x = inputs
    for layer in head.layers[1:]:
        x = layer(x)
    return keras.Model(inputs, x, name="head_on_features")


def feature_extractor(model: keras.Model) -> keras.Model:
    """pixels -> pooled base features, with the base in inference mode.

    Args:
        model: a Graft model.

    Returns:
        A keras.Model from pixels to the head's pooled input.
    """
    x = model.get_layer("preprocess").output
    feats = base_of(model)(x, training=False)
    pooled = head_of(model).layers[0](feats)
    return keras.Model(model.input, pooled, name="features")


def feature_map_shapes(base: keras.Model) -> list[tuple | None]:
    """Each layer's 4-d output shape (batch, h, w, c), or None where it has none.

    Args:
        base: the base model.

    Returns:
        One entry per layer of base.layers.
    """
    shapes = []
    for layer in base.layers:
        shp = layer.output.shape if hasattr(layer, "output") else None
        shapes.append(tuple(shp) if shp is not None and len(shp) == 4 else None)
    return shapes


def stage_starts(base: keras.Model) -> list[int]:
    """Index of each stage's first layer, a stage being a run of layers with one feature-map
    size (a padding layer's larger output is a detour, not a new stage).

    Args:
        base: the base model.

    Returns:
        Layer indices, ascending.
    """
    sizes: list[int] = []
    starts: list[int] = []
    for i, shp in enumerate(feature_map_shapes(base)):
        if shp is None or shp[1] is None:
            continue
        if not sizes or shp[1] != sizes[-1]:
            if sizes and shp[1] > sizes[-1]:
                continue  # an upsampling detour: not a new stage
            sizes.append(shp[1])
            starts.append(i)
    return starts


def plan_unfreeze(layers: list, cfg: UnfreezeConfig, base_name: str = "the base") -> dict:
    """Which of the base's layers fine-tuning trains under `cfg`, without changing them.

    The one place that decides: `unfreeze` applies it, `graft inspect-base` reports it, and
    `unfreeze_text` says it in words for the log. BatchNormalization always stays frozen.

    Args:
        layers: the base's layers, in order.
        cfg: the fine_tune.unfreeze config.
        base_name: the base's name, for error messages.

    Returns:
        A dict: the first unfrozen layer (`from_index`, `from_layer`, `from_block`), layer
        and parameter counts, and `mask` (one bool per layer: trained).

    Raises:
        ValueError: cfg.from_layer names no layer of the base.
    """
    names = [layer.name for layer in layers]
    if cfg.mode == "all":
        start = 0
    elif cfg.mode == "from_layer":
        if cfg.from_layer not in names:
            close = [n for n in names if cfg.from_layer.split("_")[0] in n][:8]
            raise ValueError(
                f"fine_tune.unfreeze.from_layer '{cfg.from_layer}' is not a layer of "
                f"{base_name}; e.g. {close or names[:8]} (see `graft inspect-base`)"
            )
        start = names.index(cfg.from_layer)
    else:
        start = int(round(len(layers) * (1.0 - cfg.top_fraction)))
    mask = [
        i >= start and not isinstance(layer, keras.layers.BatchNormalization)
        for i, layer in enumerate(layers)
    ]
    first = names[min(start, len(names) - 1)]
    weighted = [bool(layer.weights) for layer in layers]
    params = [layer.count_params() for layer in layers]
    bn = sum(i >= start and not m for i, m in enumerate(mask))
    return {
        "from_index": start,
        "from_layer": first,
        "from_block": block_of(first) or ("stem" if start == 0 else "top"),
        "unfrozen_layers": len(layers) - start,
        "trainable_layers": sum(m and w for m, w in zip(mask, weighted, strict=True)),
        "frozen_batchnorm": bn,
        "total_layers": len(layers),
        "trainable_params": sum(p for m, p in zip(mask, params, strict=True) if m),
        "total_params": sum(params),
        "mask": mask,
    }


def unfreeze_text(plan: dict) -> str:
    """What a plan really trains, in words: 'all 155 layers' or 'the top 37 ... from ...'.

    Args:
        plan: what plan_unfreeze (or unfreeze) returned.

    Returns:
        One line of text.
    """
    n, total = plan["unfrozen_layers"], plan["total_layers"]
    share = plan["trainable_params"] / max(1, plan["total_params"])
    where = (
        f"all {total} layers"
        if plan["from_index"] == 0
        else f"the top {n} of {total} layers, from '{plan['from_layer']}' "
        f"(#{plan['from_index']}, {plan['from_block']})"
    )
    return (
        f"{where}: {plan['trainable_layers']} with weights, {share:.0%} of the base's "
        f"parameters; {plan['frozen_batchnorm']} BatchNormalization layers stay frozen"
    )


def unfreeze(model: keras.Model, cfg: UnfreezeConfig) -> dict:
    """Make the base trainable as `plan_unfreeze` says; returns the plan without its mask.

    Args:
        model: a Graft model.
        cfg: the fine_tune.unfreeze config.

    Returns:
        The plan, as plan_unfreeze's dict without `mask`.
    """
    base = base_of(model)
    plan = plan_unfreeze(base.layers, cfg, base.name)
    base.trainable = True
    for layer, trainable in zip(base.layers, plan["mask"], strict=True):
        layer.trainable = trainable
    return {k: v for k, v in plan.items() if k != "mask"}


_STRATEGIES: dict[str, tf.distribute.Strategy] = {}


def choose_strategy(train: TrainConfig) -> tf.distribute.Strategy:
    """Mirrored on several devices, MultiWorker under TF_CONFIG, else the default (CPU: no-op).

    `mirrored` mirrors over the GPUs, else over the logical CPUs (one, or several where a
    process split its CPU, as the tests do: the all-reduce code path without a GPU). Each kind
    is made once per process and reused: a second instance reuses the first one's collective
    keys, so two stages run in one process would meet each other's all-reduces ("Shape
    mismatch in the collective instance"); and MultiWorkerMirroredStrategy configures
    collective ops, which TF allows only before the first op, so a stage asks for it first.

    Args:
        train: the train config (its strategy setting).

    Returns:
        The strategy to build and fit under.
    """
    gpus = tf.config.list_physical_devices("GPU")
    want = train.strategy
    if want == "auto":
        want = (
            "multi_worker"
            if os.environ.get("TF_CONFIG")
            else ("mirrored" if len(gpus) > 1 else "default")
        )
    if want not in _STRATEGIES:
        if want == "multi_worker":
            _STRATEGIES[want] = tf.distribute.MultiWorkerMirroredStrategy()
        elif want == "mirrored" and gpus:
            _STRATEGIES[want] = tf.distribute.MirroredStrategy()
        elif want == "mirrored":
            cpus = tf.config.list_logical_devices("CPU")
            _STRATEGIES[want] = tf.distribute.MirroredStrategy([d.name for d in cpus])
        else:
            return tf.distribute.get_strategy()
    return _STRATEGIES[want]


def chief_task(task_type: str | None, task_id: int | None, cluster: dict) -> bool:
    """The task that writes: `chief`, or worker 0 when the cluster has no chief (a TFJob with
    Worker replicas only: the Training Operator and TF both treat worker 0 as the chief).

    Args:
        task_type: the task's type in TF_CONFIG, or None outside a cluster.
        task_id: its index.
        cluster: the cluster spec, job name to addresses.

    Returns:
        True for the task that writes.
    """
    if not task_type:
        return True
    return task_type == "chief" or (
        task_type == "worker" and task_id == 0 and not cluster.get("chief")
    )


def _cluster(strategy: tf.distribute.Strategy) -> tuple[str | None, int | None, dict]:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return None, None, {}
    return resolver.task_type, resolver.task_id, resolver.cluster_spec().as_dict()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the stage's outputs and checkpoints (always, on one worker).

    Args:
        strategy: the stage's tf.distribute strategy.

    Returns:
        True for the writing process.
    """
    return chief_task(*_cluster(strategy))


def worker_count(strategy: tf.distribute.Strategy) -> int:
    """Machines (processes) in the strategy's cluster: what the input pipeline shards over.

    Args:
        strategy: the stage's tf.distribute strategy.

    Returns:
        1 or more.
    """
    _, _, cluster = _cluster(strategy)
    return max(1, len(cluster.get("chief", [])) + len(cluster.get("worker", [])))


def describe_strategy(strategy: tf.distribute.Strategy) -> dict:
    """What a stage ran on, for its result.json.

    Args:
        strategy: the stage's tf.distribute strategy.

    Returns:
        A dict: strategy, replicas, workers, task.
    """
    task_type, task_id, _ = _cluster(strategy)
    name = type(strategy).__name__  # MultiWorkerMirroredStrategy's class is CollectiveAllReduce...
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        name = "MultiWorkerMirroredStrategy"
    return {
        "strategy": name,
        "replicas": int(strategy.num_replicas_in_sync),
        "workers": worker_count(strategy),
        "task": f"{task_type}:{task_id}" if task_type else None,
    }


def multi_worker_keras(model: keras.Model, strategy: tf.distribute.Strategy) -> keras.Model:
    """Let Keras 3 fit/evaluate `model` under MultiWorkerMirroredStrategy over > 1 worker.

    Keras 3.15's TF trainer fails there twice (keras-team/keras#20585, tensorflow#72388): to
    build the model it all-reduces a whole (x, y) batch, which the collective strategy cannot
    reduce as one nest; and it reduces each step's scalar logs with axis=0. Here the build
    takes shapes from this worker's own batch (no collective), and the steps return their logs
    as shape [1], which the axis-0 mean averages over every replica. Epoch-end logs are read
    from the metrics' variables, summed across workers: exact. Elsewhere: the model as it is.

    Args:
        model: the compiled model.
        strategy: the stage's tf.distribute strategy.

    Returns:
        The model, patched only under multi-worker training.
    """
    if worker_count(strategy) <= 1 or getattr(model, "_graft_multi_worker", False):
        return model
    from keras.src import tree  # Keras' own nest utilities, as its trainer uses

    build = model._maybe_symbolic_build

    def local(v):
        if isinstance(v, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(v)[0]
        return v

    def symbolic_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = tree.map_structure(local, next(it))
                break
        return build(data_batch=data_batch)

    def vector_logs(step):
        return lambda data: {k: tf.reshape(v, [1]) for k, v in step(data).items()}

    model._maybe_symbolic_build = symbolic_build
    model.train_step = vector_logs(model.train_step)
    model.test_step = vector_logs(model.test_step)
    model._graft_multi_worker = True
    return model


def compile_for_fit(
    model: keras.Model, optimizer, *, metrics: bool = True, jit: bool = False, **kwargs
) -> None:
    """Compile for sparse labels, then make the optimizer's and the metric's variables now.

    Without a tf.distribute strategy Keras makes them inside the first trace of the train step,
    and a variable made in a trace makes TensorFlow trace the whole step a second time: the first
    fit of the demo model's fine-tune took 15.7 s, 6.4 s with its variables made here.
    Call it inside the strategy's scope, as `compile` itself must be.

    Args:
        model: the model to compile.
        optimizer: the optimizer.
        metrics: track accuracy (False for the LR range test).
        jit: compile with XLA.
        **kwargs: passed to `compile`.
    """
    model.compile(
        optimizer,
        loss="sparse_categorical_crossentropy",
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")] if metrics else None,
        jit_compile=jit,
        **kwargs,
    )
    model.optimizer.build(model.trainable_variables)


def set_precision(train: TrainConfig) -> str:
    """mixed_float16 only where a GPU exists; on CPU it would only slow things down.

    Args:
        train: the train config (its mixed_precision setting).

    Returns:
        The Keras policy set: "mixed_float16" or "float32".
    """
    policy = (
        "mixed_float16"
        if train.mixed_precision and tf.config.list_physical_devices("GPU")
        else "float32"
    )
    if train.mixed_precision and policy == "float32":
        log("train.mixed_precision is on but no GPU is visible: staying in float32", level="warn")
    keras.mixed_precision.set_global_policy(policy)
    return policy


@dataclass
class LayerInfo:
    index: int
    name: str
    kind: str
    block: str
    params: int


def describe_base(
    name: str, size: int | None = None, kwargs: dict | None = None
) -> tuple[keras.Model, list[LayerInfo]]:
    """A base's layers with their block and parameters, for `graft inspect-base` (no weights).

    Args:
        name: a base name, e.g. "mobilenet_v2".
        size: the input side; None: the backbone's default.
        kwargs: the base's constructor arguments.

    Returns:
        (base, rows): the base model and one LayerInfo per layer.
    """
    b = backbone(name)
    cfg = BaseConfig(name=name, weights=None, kwargs=kwargs or {})
    base = build_base(cfg, size or b.default_size)
    blocks = b.blocks([layer.name for layer in base.layers])
    rows = [
        LayerInfo(i, layer.name, type(layer).__name__, blocks[i], layer.count_params())
        for i, layer in enumerate(base.layers)
    ]
    return base, rows
