"""The two training stages: head on a frozen base, then guarded fine-tuning of its top.

Each stage writes into its own output dir: model.keras, history.jsonl, curves.png,
TensorBoard logs, result.json, and a BackupAndRestore checkpoint while it runs, so a
killed stage re-run in the same dir continues from its last completed epoch and a
finished one (result.json) is returned as it is.

Under tf.distribute (components.model.choose_strategy) every worker runs the same code; only
the chief writes the output dir. The others write into a temp dir that is deleted at the end,
the Keras multi-worker pattern: saving may run collective ops, so every worker must save.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields

import keras
import numpy as np
import tensorflow as tf

from graft.components import data as gdata
from graft.components import layerwise as glayer
from graft.components import model as gmodel
from graft.components.fitting import (
    MODEL,
    RESULT,
    class_weights,
    hits_and_losses,
    load_model,
    make_optimizer,
    read_history,
    refit_epochs,
    reinitialise,
    scores_on,
)
from graft.components.fs import (
    any_gfile,
    open_file,
    read_json,
    sync_to_disk,
    write_json_atomic,
    write_text_atomic,
)
from graft.components.manifest import excluded_from_eval, excluded_from_train
from graft.core.config import (
    AugmentConfig,
    BaseConfig,
    FineTuneConfig,
    HeadConfig,
    TrainConfig,
    TrainHeadConfig,
)
from graft.core.log import Progress, log
from graft.core.paths import join as os_join

__all__ = [
    "EpochLog",
    "callbacks",
    "StageResult",
    "HeadDetails",
    "FineTuneDetails",
    "FineTuneSkipped",
    "SHIPPED_HEAD",
    "SHIPPED_UNGUARDED",
    "TimeBudget",
    "epochs_that_fit",
    "train_head",
    "fine_tune",
    "finished",
    "finish",
    "load_model",
    "scores_on",
]

MIN_LR_FIND_STEPS = 20  # the range test's baseline alone takes its first two decades
SHIPPED_HEAD = "head trained on train, early-stopped on val"
SHIPPED_TUNED = "fine-tuned model (the guard kept it on val)"
SHIPPED_UNGUARDED = "fine-tuned model (fine_tune.guard: false, not compared with the head)"


@dataclass
class HeadDetails:
    """What the head stage did beyond its scores (result.json's `extra`)."""

    class_weight: dict | None  # the weights per class index the fit used; None: none
    labels: list[str]
    train_seconds: float
    feature_seconds: float
    features: dict | None  # the feature store's {"computed", "reused"} counts
    feature_store: dict | None  # root, fingerprint, geometry: the guard's folds read it
    saved_val: dict | None  # val accuracy and loss of the weights saved: fine_tune reuses it
    deterministic: bool
    distribution: dict
    class_weight_setting: str | None = None  # train_head.class_weight as the stage read it


@dataclass
class FineTuneDetails:
    """The guard's decision and how fine-tuning ran (result.json's `extra`)."""

    guard: str  # "accepted", "kept_head", or "off" (fine_tune.guard: false: kept unjudged)
    kept: str  # "fine_tuned" or "head"
    head_val_accuracy: float
    fine_tuned_val_accuracy: float
    head_val_loss: float
    fine_tuned_val_loss: float
    val_gain: dict | None
    val_only_gain: dict | None
    gain_evidence: str | None
    cross_validation: dict | None
    unfreeze: dict
    learning_rate: float
    lr_find: dict | None
    stage_rates: str | None
    deterministic: bool
    distribution: dict
    shipped: str | None = None  # the model this stage hands on, in words
    guard_rule: str | None = None  # fine_tune.guard_rule the guard decided by (None: no guard)
    # fine_tune.max_minutes: its minutes, the epoch it stopped after and the epoch a cosine
    # decay was re-planned to end at (None: neither happened); None when no budget was set
    time_budget: dict | None = None


@dataclass
class FineTuneSkipped:
    """Fine-tuning did not run: the head model passed through (or a head refit on train +
    val in its place), and why."""

    guard: str = "disabled"
    kept: str = "head"
    skipped: str = ""  # why: the user's setting, or advise's plan
    shipped: str | None = None  # SHIPPED_HEAD, or "head refit on train+val (N images, E epochs)"
    shipped_why: str | None = None  # train_head.refit's reason: advise's evidence or the config
    refit: dict | None = None  # the refit's images and epochs; None: no refit ran


def _details(extra: dict | None):
    """result.json's `extra` as its typed record, told apart by a key only it has; a field an
    older Graft did not write reads as None."""
    if extra is None:
        return None
    if "labels" in extra:
        kind = HeadDetails
    else:
        kind = FineTuneSkipped if "skipped" in extra else FineTuneDetails
    return kind(**{f.name: extra.get(f.name) for f in fields(kind)})


@dataclass
class StageResult:
    """What a training stage produced: its model, best val scores, epochs and how it ran;
    written as result.json, which also marks the stage finished."""

    stage: str
    model_path: str
    best_val_accuracy: float
    best_val_loss: float
    epochs_run: int
    resumed_from_epoch: int = 0
    seconds: float = 0.0
    cache_used: bool = False
    precision: str = "float32"
    extra: HeadDetails | FineTuneDetails | FineTuneSkipped | None = None


# ------------------------------------------------------------------ shared pieces


class EpochLog(keras.callbacks.Callback):
    """Appends one JSON line per epoch (survives a resume) and records where it started."""

    def __init__(self, path: str, stage: str, total_epochs: int):
        super().__init__()
        self.path, self.stage, self.total = path, stage, total_epochs
        self.first_epoch: int | None = None
        self.t0 = time.time()
        self.bar: Progress | None = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.first_epoch is None:
            self.first_epoch = epoch
            self._drop_rows_after(epoch)
            if epoch:
                log(f"{self.stage}: resuming at epoch {epoch + 1}/{self.total}")
            if sys.stderr.isatty():  # a bar with ETA on a terminal; the epoch lines print above
                self.bar = Progress(self.stage, self.total, "epochs").__enter__()
                self.bar.update(epoch)

    def _drop_rows_after(self, epoch: int) -> None:
        """A fit that starts at `epoch` re-runs every later epoch: rows an earlier attempt
        logged past it go (a fit killed after it ended restarts at 0, as Keras then has no
        backup; its old rows would have stayed, and been read as this fit's)."""
        if not os.path.exists(self.path):
            return
        rows = [r for r in read_history(os.path.dirname(self.path)) if r["epoch"] <= epoch]
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in rows))

    def on_train_end(self, logs=None):
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        done = epoch + 1 - (self.first_epoch or 0)
        eta = (time.time() - self.t0) / max(1, done) * (self.total - epoch - 1)
        log(
            f"{self.stage}: epoch {epoch + 1}/{self.total} loss {row.get('loss', 0):.4f} "
            f"acc {row.get('accuracy', 0):.3f} val_loss {row.get('val_loss', 0):.4f} "
            f"val_acc {row.get('val_accuracy', 0):.3f} (ETA {eta:.0f}s)"
        )
        if self.bar is not None:
            self.bar.update(epoch + 1)


def plot_curves(history: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    ep = [h["epoch"] for h in history]
    for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
        for k, style in ((key, "-"), (f"val_{key}", "--")):
            if history and k in history[0]:
                ax.plot(ep, [h[k] for h in history], style, label=k)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


class WorkerBackup(keras.callbacks.BackupAndRestore):
    """BackupAndRestore where every worker restores from the chief's checkpoint.

    Each worker writes its own (a non-chief's goes to its temp dir), but all must resume at
    the same epoch with the same weights, or their collective steps would not line up.
    """

    def __init__(self, write_dir: str, restore_dir: str):
        # double: the previous checkpoint is kept, and restored when a kill tore the latest;
        # only the writer of a folder repairs it (a worker reading the chief's never writes)
        super().__init__(write_dir, double_checkpoint=True)
        self.restore = keras.callbacks.BackupAndRestore(
            restore_dir,
            double_checkpoint=os.path.abspath(restore_dir) == os.path.abspath(write_dir),
        )

    def on_train_begin(self, logs=None):
        self.restore.set_model(self.model)
        if self.restore.double_checkpoint:
            _mend_torn_metadata(self.restore)
        self.restore.on_train_begin(logs)


def _mend_torn_metadata(backup: keras.callbacks.BackupAndRestore) -> None:
    """A kill inside the write of the backup's training_metadata.json leaves JSON Keras cannot
    parse, and its fall-back to the previous checkpoint catches only a torn weights file: every
    resume failed. The previous pair is taken instead, or none (the fit starts over)."""
    meta, prev_meta = backup._training_metadata_path, backup._prev_training_metadata_path
    weights, prev_weights = backup._weights_path, backup._prev_weights_path
    if not os.path.exists(meta) or read_json(meta) is not None:
        return
    if (
        os.path.exists(prev_meta)
        and read_json(prev_meta) is not None
        and os.path.exists(prev_weights)
    ):
        shutil.copyfile(prev_weights, weights)
        shutil.copyfile(prev_meta, meta)
        log(f"backup: {meta} was torn by a kill; resuming from the checkpoint before it", "warn")
    else:
        for path in (meta, weights):
            if os.path.exists(path):
                os.remove(path)
        log(
            f"backup: {meta} was torn by a kill and no earlier checkpoint is kept; the fit "
            "starts over",
            "warn",
        )


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping whose state (best val loss, epochs waited, the best epoch's weights) is
    kept beside the stage's backup, so a fit resumed after a kill stops, and restores, as the
    uninterrupted fit would: Keras resets it at every fit's start. Written after each epoch
    into `write_dir`, read from `restore_dir` (the chief's, so every worker decides alike);
    the backup's own clean-up removes it when the fit ends."""

    STATE, WEIGHTS = "early_stopping.json", "early_stopping_best.npz"

    def __init__(self, write_dir: str, restore_dir: str, **kwargs):
        super().__init__(**kwargs)
        self.write_dir, self.restore_dir = write_dir, restore_dir

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        state = read_json(os_join(self.restore_dir, self.STATE))
        backup = read_json(os_join(self.restore_dir, "training_metadata.json"))
        if not state or not backup or state.get("epoch") != backup.get("epoch"):
            return  # a new fit, or a kill between this save and the backup's: start afresh
        self.wait, self.best, self.best_epoch = state["wait"], state["best"], state["best_epoch"]
        weights = os_join(self.restore_dir, self.WEIGHTS)
        if self.restore_best_weights and any_gfile.exists(weights):
            with open_file(weights, "rb") as f, np.load(io.BytesIO(f.read())) as saved:
                self.best_weights = [saved[f"w{i}"] for i in range(len(saved.files))]

    def on_epoch_end(self, epoch, logs=None):
        best_before = self.best_epoch if self.best is not None else None
        super().on_epoch_end(epoch, logs)
        if self.best is None:
            return
        any_gfile.makedirs(self.write_dir)
        if self.restore_best_weights and self.best_weights and self.best_epoch != best_before:
            buf = io.BytesIO()
            np.savez(buf, **{f"w{i}": w for i, w in enumerate(self.best_weights)})
            tmp = os_join(self.write_dir, f".{self.WEIGHTS}.tmp")
            with open_file(tmp, "wb") as f:
                f.write(buf.getvalue())
            any_gfile.rename(tmp, os_join(self.write_dir, self.WEIGHTS), overwrite=True)
        write_json_atomic(
            os_join(self.write_dir, self.STATE),
            {"epoch": epoch + 1, "wait": self.wait, "best": float(self.best),
             "best_epoch": self.best_epoch},  # epochs done, as the backup's metadata counts
        )  # fmt: skip


def callbacks(
    out_dir: str, stage: str, epochs: int, patience: int, chief_dir: str | None = None
) -> tuple[list, EpochLog]:
    """The stage's callbacks, writing into out_dir; a worker resumes from chief_dir's backup.

    Args:
        out_dir: the stage's working folder (its backup, history and TensorBoard logs).
        stage: the stage's name, for the epoch log.
        epochs: the epochs planned, for the epoch log.
        patience: early stopping's patience; 0 for none.
        chief_dir: the chief's working folder, which a worker resumes from.

    Returns:
        (the callbacks, the epoch log among them).
    """
    elog = EpochLog(os.path.join(out_dir, "history.jsonl"), stage, epochs)
    cbs: list = [
        elog,  # an epoch's row before its backup: a kill between the two re-runs the epoch
        WorkerBackup(os.path.join(out_dir, "backup"), os.path.join(chief_dir or out_dir, "backup")),
        keras.callbacks.TensorBoard(
            os.path.join(out_dir, "tensorboard"), write_graph=False, profile_batch=0
        ),
    ]
    if patience:
        backup = (os.path.join(out_dir, "backup"), os.path.join(chief_dir or out_dir, "backup"))
        cbs.insert(
            0,
            ResumableEarlyStopping(
                *backup, monitor="val_loss", patience=patience, restore_best_weights=True
            ),
        )
    return cbs, elog


def finished(out_dir: str) -> StageResult | None:
    """A finished stage's result, so that a rerun returns it instead of training again.

    Args:
        out_dir: the stage's output directory.

    Returns:
        The StageResult read from its result.json, or None when the stage has not finished.
    """
    path = os.path.join(out_dir, RESULT)
    if os.path.exists(path):
        with open(path) as f:
            res = json.load(f)
        return StageResult(**{**res, "extra": _details(res.get("extra"))})
    return None


def start_stage(
    out_dir: str, stage: str, train: TrainConfig, chief: bool = True
) -> StageResult | None:
    """Make the dir (the chief only); a finished stage is returned as it is, never re-run."""
    if chief:
        os.makedirs(out_dir, exist_ok=True)
    done = finished(out_dir)
    if done:
        log(f"{stage}: already finished in {out_dir}")
        return done
    keras.utils.set_random_seed(train.seed)
    if train.deterministic:
        # process-wide; nondeterministic ops then raise
        tf.config.experimental.enable_op_determinism()
    return None


def write_dir(out_dir: str, strategy: tf.distribute.Strategy) -> str:
    """Where this process writes: out_dir on the chief, a fresh temp dir on any other worker."""
    if gmodel.is_chief(strategy):
        return out_dir
    tmp = tempfile.mkdtemp(prefix="graft-worker-")
    task = gmodel.describe_strategy(strategy)["task"]
    log(f"{task}: not the chief: writing to {tmp} (deleted at the end), the chief to {out_dir}")
    return tmp


def release(wdir: str, out_dir: str) -> None:
    """A non-chief's temp dir goes once the stage ends, finished or failed."""
    if os.path.abspath(wdir) != os.path.abspath(out_dir):
        shutil.rmtree(wdir, ignore_errors=True)


def distribution(strategy: tf.distribute.Strategy, policy=None) -> dict:
    """What a stage ran on (strategy, replicas, workers, input sharding), for result.json."""
    info = gmodel.describe_strategy(strategy)
    if policy is not None and info["workers"] > 1:
        info["shard_policy"] = policy.name
    return info


def finish(out_dir: str, res: StageResult, title: str) -> StageResult:
    """Mark a stage finished: its learning curves, then result.json (written last).

    Args:
        out_dir: the stage's output directory.
        res: the stage's result.
        title: the curves plot's title.

    Returns:
        `res`, as written.
    """
    hist = read_history(out_dir)
    if hist:
        plot_curves(hist, os.path.join(out_dir, "curves.png"), title)
    if res.model_path and os.path.isfile(res.model_path):  # on disk before what says it is
        sync_to_disk(res.model_path)
    write_json_atomic(os.path.join(out_dir, RESULT), asdict(res))  # a kill leaves no half
    return res


def _best(hist: list[dict], patience: int) -> tuple[float, float]:
    """Val accuracy and loss of the epoch whose weights the stage keeps: the best val loss when
    early stopping restores it (patience > 0), else the last epoch's."""
    if not hist:
        return float("nan"), float("nan")
    best = min(hist, key=lambda h: h.get("val_loss", math.inf)) if patience else hist[-1]
    return float(best.get("val_accuracy", float("nan"))), float(best.get("val_loss", float("nan")))


def _jit(train: TrainConfig) -> bool:
    return bool(train.jit_compile and tf.config.list_physical_devices("GPU"))


# ------------------------------------------------------------------ stage 1: head


def use_cache(cfg: TrainHeadConfig) -> bool:
    valid = not cfg.augment or cfg.augmented_passes > 0
    if cfg.feature_cache == "on" and not valid:
        raise ValueError(
            "train_head.feature_cache=on needs train_head.augment=false or "
            "train_head.augmented_passes > 0"
        )
    return cfg.feature_cache != "off" and valid


def feature_batch() -> int:
    """Batch of the inference-only feature pass.

    CPU: 32, cheaper per image than 128 on 2 cores (benchmarks/README.md, head_cache).
    GPU: 128 (unmeasured there; a GPU pays per call, not per image).
    """
    return 128 if tf.config.list_physical_devices("GPU") else 32


def _features(step, ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for x, y in ds:
        xs.append(step(x).numpy())
        ys.append(y.numpy())
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys)


def _cached_features(
    model,
    cfg,
    augment,
    size,
    examples_dir,
    exclude,
    exclude_train,
    out_dir,
    seed,
    deterministic,
    geometry,
):
    """Run the frozen base once per pass; saved in the step dir so a resume reuses them."""
    path = os.path.join(out_dir, "features.npz")
    if os.path.exists(path):
        z = np.load(path)
        return z["xt"], z["yt"], z["xv"], z["yv"]
    extractor = gmodel.feature_extractor(model)
    # one compiled inference function for every batch shape and split: traced once (an eager
    # call per batch runs op by op; a fresh trace per split or batch shape costs seconds)
    step = tf.function(
        lambda x: extractor(x, training=False),
        input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)],
    )
    t0 = time.time()
    passes = max(1, cfg.augmented_passes) if cfg.augment else 1
    batch = feature_batch()
    parts = []
    for p in range(passes):
        ds = gdata.image_dataset(
            examples_dir,
            "train",
            size,
            batch,
            augment=augment if cfg.augment else None,
            seed=seed + p,
            exclude_sha256=exclude_train,
            deterministic=deterministic,
            geometry=geometry,
        )
        parts.append(_features(step, ds))
    xt = np.concatenate([a for a, _ in parts])
    yt = np.concatenate([b for _, b in parts])
    xv, yv = _features(
        step,
        gdata.image_dataset(
            examples_dir, "val", size, batch, exclude_sha256=exclude, geometry=geometry
        ),
    )
    np.savez(path + ".tmp.npz", xt=xt, yt=yt, xv=xv, yv=yv)
    os.replace(path + ".tmp.npz", path)
    log(
        f"train_head: cached {len(xt)} train + {len(xv)} val features ({xt.shape[1]}-d) "
        f"in {time.time() - t0:.1f}s"
    )
    return xt, yt, xv, yv


def _stored_features(
    model, examples_dir, exclude, exclude_train, store_root, size, chief, geometry
):
    """Train and val features through the feature store: the base runs on unseen images only."""
    from graft.components import features as gfeat

    base = gmodel.base_of(model)
    layers = gmodel.feature_layers(base)
    store = None
    if store_root and chief:  # one writer: the chief
        store = gfeat.FeatureStore(store_root, base.graft_fingerprint, size, geometry)
    extractor = gfeat.pooled_extractor(base, model.get_layer("preprocess"), layers)
    got = {}
    for split, excl in (("train", exclude_train), ("val", exclude)):
        got[split] = gfeat.split_features(
            examples_dir,
            split,
            layers,
            extractor=extractor,
            store=store,
            exclude=excl,
            batch_size=feature_batch(),
            stage="train_head",
            geometry=geometry,
        )
    t, v = got["train"], got["val"]
    counts = {"computed": t.computed + v.computed, "reused": t.reused + v.reused}
    log(
        f"train_head: features of {len(t.y)} train + {len(v.y)} val images: "
        f"{counts['reused']} from the store, {counts['computed']} computed"
    )
    return t.joined(layers), t.y, v.joined(layers), v.y, counts


def _fit_normalizer(model: keras.Model, x: np.ndarray) -> None:
    """head.normalize: the per-channel mean and variance of the training features, once."""
    norm = gmodel.feature_normalizer(model)
    if norm is not None:
        norm.adapt(x)
        log(f"train_head: features standardised per channel ({x.shape[1]}-d, {len(x)} images)")


def _scores_of(head: keras.Model, x: np.ndarray, y: np.ndarray) -> dict | None:
    """Val accuracy and loss of a head on pooled features, as the whole model would score."""
    if not len(y):
        return None
    hits, losses = hits_and_losses(keras.ops.convert_to_numpy(head(x, training=False)), y)
    return {"accuracy": float(hits.mean()), "loss": float(losses.mean())}


def train_head(
    examples_dir: str,
    out_dir: str,
    *,
    base: BaseConfig,
    head: HeadConfig,
    train: TrainConfig,
    cfg: TrainHeadConfig,
    augment: AugmentConfig,
    image_size: int,
    validation_dir: str | None = None,
    extra_callbacks: list | None = None,
    feature_store: str = "",
    geometry: gdata.Geometry = gdata.SQUASH,
) -> StageResult:
    """Train a new head on the frozen base; base weights and BN statistics stay bit-identical.

    Args:
        examples_dir: the ingest step's output.
        out_dir: the stage's output (model.keras, history, result.json); a finished one is
            returned as it is.
        base: the `base` section (backbone, weights).
        head: the `head` section (the layers on top).
        train: the `train` section (seed, batch, precision, distribution).
        cfg: the `train_head` section (epochs, rate, feature cache).
        augment: the `augment` section.
        image_size: the model's input size in pixels.
        validation_dir: the validate step's output (images left out), or None.
        extra_callbacks: Keras callbacks added to the fit, or None.
        feature_store: where pooled base features are stored between runs ("" for none).
        geometry: how images are fitted to the input size.

    Returns:
        The StageResult, with HeadDetails in `extra`.

    Raises:
        ValueError: train_head.feature_cache is on with augmentation but no augmented passes.
    """
    strategy = gmodel.choose_strategy(train)  # first: MultiWorker must precede any TF op
    done = start_stage(out_dir, "train_head", train, gmodel.is_chief(strategy))
    if done:
        return done
    wdir = write_dir(out_dir, strategy)
    try:
        return _train_head(
            examples_dir,
            out_dir,
            wdir,
            strategy,
            base=base,
            head=head,
            train=train,
            cfg=cfg,
            augment=augment,
            image_size=image_size,
            validation_dir=validation_dir,
            extra_callbacks=extra_callbacks,
            feature_store=feature_store,
            geometry=geometry,
        )
    finally:
        release(wdir, out_dir)


@dataclass
class _HeadData:
    """Where the head stage's images come from, and which of them each split leaves out."""

    examples_dir: str
    image_size: int
    geometry: gdata.Geometry
    exclude: set | None  # from val: the eval exclusions
    exclude_train: set | None
    feature_store: str
    chief: bool
    workers: int


@dataclass
class _HeadFit:
    """What fitting the head left behind for result.json besides the history."""

    policy: object = None  # the input sharding of an image fit
    features: dict | None = None  # the feature store's computed/reused counts
    saved_val: dict | None = None  # val scores of the weights saved
    feature_seconds: float = 0.0


def _train_head(
    examples_dir,
    out_dir,
    wdir,
    strategy,
    *,
    base,
    head,
    train,
    cfg,
    augment,
    image_size,
    validation_dir,
    extra_callbacks,
    feature_store,
    geometry,
) -> StageResult:
    t0 = time.time()
    precision = gmodel.set_precision(train)
    labels = gdata.read_labels(examples_dir)
    exclude = excluded_from_eval(validation_dir)
    exclude_train = excluded_from_train(validation_dir)
    cw = class_weights(examples_dir, len(labels), cfg.class_weight, exclude_train)
    cached = use_cache(cfg)
    workers = gmodel.worker_count(strategy)
    with strategy.scope():
        model = gmodel.multi_worker_keras(
            gmodel.build_model(base, head, len(labels), image_size), strategy
        )
    cbs, elog = callbacks(wdir, "train_head", cfg.epochs, cfg.patience, out_dir)
    cbs += extra_callbacks or []
    t_fit = time.time()
    src = _HeadData(
        examples_dir,
        image_size,
        geometry,
        exclude,
        exclude_train,
        feature_store,
        gmodel.is_chief(strategy),
        workers,
    )
    if cached:
        fit = _fit_head_on_features(model, src, wdir, strategy, train, cfg, augment, cw, cbs)
    else:
        fit = _fit_head_on_images(model, src, strategy, train, cfg, augment, cw, cbs)
    t_fit = time.time() - t_fit
    _compile_stock(model, strategy, cfg.optimizer, cfg.learning_rate)
    model.save(os.path.join(wdir, MODEL))
    hist = read_history(wdir)
    acc, loss = _best(hist, cfg.patience)
    res = StageResult(
        stage="train_head",
        model_path=os.path.join(out_dir, MODEL),
        best_val_accuracy=acc,
        best_val_loss=loss,
        epochs_run=len(hist),
        resumed_from_epoch=elog.first_epoch or 0,
        seconds=round(time.time() - t0, 2),
        cache_used=cached,
        precision=precision,
        extra=_head_details(model, strategy, train, src, fit, cw, labels, t_fit),
    )
    res.extra.class_weight_setting = cfg.class_weight
    weights = _weights_text(cfg.class_weight, cw, labels)
    log(
        f"train_head: best val_accuracy {acc:.3f} after {len(hist)} epoch(s), cache "
        f"{'on' if cached else 'off'}, class weights {weights}, {res.seconds:.1f}s",
        level="ok",
    )
    return finish(wdir, res, "head stage (frozen base)")


def _weights_text(setting: str, cw: dict | None, labels: list[str]) -> str:
    """The class weights a fit used, for the log: the setting and each class's weight."""
    if cw is None:
        why = "" if setting == "none" else ": the class counts are within 5%"
        return f"none (train_head.class_weight={setting}{why})"
    shown = ", ".join(f"{labels[i]} {w:.2f}" for i, w in cw.items())
    return f"{shown} (train_head.class_weight={setting})"


def _stored_head_features(model, src: _HeadData):
    """Plain features: the same for every run, so the store keeps them."""
    return _stored_features(
        model,
        src.examples_dir,
        src.exclude,
        src.exclude_train,
        src.feature_store,
        src.image_size,
        src.chief,
        src.geometry,
    )


def _with_views(model, src: _HeadData, views: int, xt, yt, counts: dict):
    """The training rows plus train_head.feature_views augmented views of each training image,
    through the feature store (the base runs on views it does not hold); `counts` gains the
    view rows computed and reused."""
    from graft.components import features as gfeat

    base = gmodel.base_of(model)
    layers = gmodel.feature_layers(base)  # head.taps too: every view of every layer read
    store = None
    if src.feature_store and src.chief:  # one writer: the chief
        store = gfeat.FeatureStore(
            src.feature_store, base.graft_fingerprint, src.image_size, src.geometry
        )
    got = gfeat.split_view_features(
        src.examples_dir,
        "train",
        layers,
        views,
        store=store,
        extractor=gfeat.pooled_extractor(base, model.get_layer("preprocess"), layers),
        exclude=src.exclude_train,
        batch_size=feature_batch(),
        stage="train_head: views",
        geometry=src.geometry,
    )
    if any(not np.array_equal(g.y, yt) for g in got):
        raise RuntimeError("train_head: views out of the training images' order")  # a bug
    counts.update(
        views=views,
        view_rows_computed=sum(g.computed for g in got),
        view_rows_reused=sum(g.reused for g in got),
    )
    log(
        f"train_head: {views} augmented view(s) of each of {len(yt)} training images: "
        f"{counts['view_rows_reused']} rows from the store, {counts['view_rows_computed']} "
        "computed; val stays plain"
    )
    return np.concatenate([xt, *(g.joined(layers) for g in got)]), np.tile(yt, views + 1)


def _fit_head_on_features(
    model, src: _HeadData, wdir, strategy, train, cfg, augment, cw, cbs
) -> _HeadFit:
    """The head alone on the base's pooled features, computed once: far cheaper per epoch."""
    fit = _HeadFit()
    t_feat = time.time()
    if not cfg.augment:
        xt, yt, xv, yv, fit.features = _stored_head_features(model, src)
        plain = xt
        if cfg.feature_views:
            xt, yt = _with_views(model, src, cfg.feature_views, xt, yt, fit.features)
    else:
        xt, yt, xv, yv = _cached_features(
            model,
            cfg,
            augment,
            src.image_size,
            src.examples_dir,
            src.exclude,
            src.exclude_train,
            wdir,
            train.seed,
            train.deterministic,
            src.geometry,
        )
        plain = xt
    fit.feature_seconds = time.time() - t_feat
    _fit_normalizer(model, plain)  # of the plain images': what the served model sees
    with strategy.scope():
        trainer = gmodel.multi_worker_keras(
            gmodel.pooled_head(gmodel.head_of(model), xt.shape[1]), strategy
        )
        gmodel.compile_for_fit(
            trainer,
            make_optimizer(cfg.optimizer, cfg.learning_rate),
            jit=_jit(train),
            # a step on pooled features is ~1 ms: run many per call, not one per Python
            # turn; one device only (Keras' multi-step loop fails under a strategy)
            steps_per_execution=(
                max(1, min(64, math.ceil(len(yt) / cfg.batch_size)))
                if strategy.num_replicas_in_sync == 1 and src.workers == 1
                else 1
            ),
        )
    trainer.fit(
        xt,
        yt,
        batch_size=cfg.batch_size,
        epochs=cfg.epochs,
        validation_data=(xv, yv),
        class_weight=cw,
        callbacks=cbs,
        verbose=0,
        shuffle=True,
    )
    fit.saved_val = _scores_of(trainer, xv, yv)
    return fit


def _fit_head_on_images(model, src: _HeadData, strategy, train, cfg, augment, cw, cbs) -> _HeadFit:
    """The whole model on decoded images: what augmenting every epoch needs."""
    train_ds = gdata.image_dataset(
        src.examples_dir,
        "train",
        src.image_size,
        cfg.batch_size,
        shuffle=True,
        augment=augment if cfg.augment else None,
        seed=train.seed,
        exclude_sha256=src.exclude_train,
        deterministic=train.deterministic,
        workers=src.workers,
        geometry=src.geometry,
    )
    fit = _HeadFit(policy=train_ds.options().experimental_distribute.auto_shard_policy)
    if gmodel.feature_normalizer(model) is not None:  # plain train features, via the store
        _fit_normalizer(model, _stored_head_features(model, src)[0])
    val_ds = gdata.image_dataset(
        src.examples_dir,
        "val",
        src.image_size,
        cfg.batch_size,
        exclude_sha256=src.exclude,
        workers=src.workers,
        geometry=src.geometry,
    )
    with strategy.scope():
        gmodel.compile_for_fit(
            model, make_optimizer(cfg.optimizer, cfg.learning_rate), jit=_jit(train)
        )
    model.fit(
        train_ds,
        epochs=cfg.epochs,
        steps_per_epoch=gdata.steps_per_epoch(
            train_ds, src.examples_dir, "train", cfg.batch_size, src.exclude_train
        ),
        validation_data=val_ds,
        class_weight=cw,
        callbacks=cbs,
        verbose=0,
    )
    return fit


def _compile_stock(model, strategy, optimizer: str, learning_rate, momentum=0.9) -> None:
    """Compiled with a stock optimizer before saving: plain Keras loads the file without graft."""
    with strategy.scope():
        model.compile(
            make_optimizer(optimizer, learning_rate, momentum),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )


def _head_details(model, strategy, train, src: _HeadData, fit: _HeadFit, cw, labels, t_fit):
    """result.json's account of the head stage: timings, the store, the val scores saved."""
    return HeadDetails(
        class_weight=cw,
        labels=labels,
        train_seconds=round(t_fit, 2),
        feature_seconds=round(fit.feature_seconds, 2),
        features=fit.features,
        # where this base's pooled features are stored: the fine-tune guard's folds read them
        feature_store={
            "root": src.feature_store,
            "fingerprint": gmodel.base_of(model).graft_fingerprint,
            "geometry": src.geometry.key,
        }
        if src.feature_store
        else None,
        saved_val=fit.saved_val,  # of the weights saved: fine_tune reuses it
        deterministic=train.deterministic,
        distribution=distribution(strategy, fit.policy),
    )


# ------------------------------------------------------------------ stage 2: fine-tune


def _find_rate(model, train_ds, cfg, wdir, strategy, workers, steps, depth, jit) -> dict | None:
    """fine_tune.lr_find: the LR range test's rate, clipped to 0.1x..10x learning_rate; kept
    in lr_find.json so a resumed stage uses the same test. None when off, not run, or when
    the loss never diverged (then learning_rate as set)."""
    if not cfg.lr_find:
        return None
    lo, hi = cfg.learning_rate / 10, cfg.learning_rate * 10
    path = os.path.join(wdir, "lr_find.json")
    n = min(cfg.lr_find_steps, steps)
    if os.path.exists(path):
        with open(path) as f:
            found = json.load(f)
    elif workers > 1 or n < MIN_LR_FIND_STEPS:
        why = (
            f"on {workers} workers (each would see its own batches and could pick another rate)"
            if workers > 1
            else f"with {n} batches an epoch (< {MIN_LR_FIND_STEPS}: too few for a baseline)"
        )
        log(f"fine_tune: lr_find skipped {why}; learning_rate {cfg.learning_rate:g}", level="warn")
        return None
    else:
        t0 = time.time()
        runs = f"{cfg.lr_find_repeats} runs of " if cfg.lr_find_repeats > 1 else ""
        log(f"fine_tune: LR range test: {runs}{n} batches at a rate rising from 1e-07 to 0.1")
        found = glayer.range_test(
            model,
            train_ds,
            optimizer=cfg.optimizer,
            momentum=cfg.momentum,
            steps=n,
            depth_by_path=depth,
            decay=cfg.layer_lr_decay,
            strategy=strategy,
            jit=jit,
            repeats=cfg.lr_find_repeats,
        )
        found["seconds"] = round(time.time() - t0, 1)
        write_json_atomic(path, found)  # read back on a resume: never half written
    if found["chosen"] is None:
        log(
            f"fine_tune: LR range test: the loss did not diverge over {len(found['losses'])} "
            f"batches up to lr {found['rates'][-1]:.2g}; learning_rate {cfg.learning_rate:g}",
            level="warn",
        )
        return None
    found["used"] = float(min(hi, max(lo, found["chosen"])))  # re-clipped on a resume too
    log(
        f"fine_tune: LR range test: loss diverges from lr {found['diverged_rate']:.2g}; a third "
        f"of it, {found['chosen']:.2g}, within [{lo:g}, {hi:g}]: lr {found['used']:.2g}"
    )
    return found


class TimeBudget(keras.callbacks.Callback):
    """Stop after the epoch that would leave too little time for another one. Given the
    planned epochs and steps of a cosine decay, re-plan it once to end at the last epoch that
    fits, then stop there: cut part-way it would stop at a high rate (flowers: 6 of 8 epochs
    ran on a loaded machine, and the guard rejected the result). An epoch's time is the
    latest one's; the first, which traces the train step, only counts until a second ran.
    With `state_path`, the seconds spent and the re-plan are saved after every epoch, so a
    fit resumed at the epoch after the last one saved keeps the same decay and the same
    budget (not a fresh one); a fit that starts anywhere else ignores the file."""

    def __init__(
        self,
        minutes: float,
        stage: str,
        *,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
        clock=time.time,
        state_path: str | None = None,
        first_epoch_s: float | None = None,
    ):
        super().__init__()
        self.seconds, self.stage, self.clock = minutes * 60, stage, clock
        self.planned, self.steps, self.state_path = epochs, steps_per_epoch, state_path
        self.t0 = self.t_epoch = clock()
        self.before = 0.0  # seconds the stage's earlier, killed fits spent (from state_path)
        # what the fit's first epoch counts as at most (it traces the step again): a measured
        # epoch's time, from the start plan or a killed fit's state
        self.first_epoch_s = first_epoch_s
        self.ran = 0  # epochs this fit ran (a resumed fit starts at a later epoch)
        self.stopped_at: int | None = None
        self.replanned_to: int | None = None

    def _plan(self) -> dict:
        return {"minutes": self.seconds / 60, "planned": self.planned, "steps": self.steps}

    def on_epoch_begin(self, epoch, logs=None):
        if self.ran or not self.state_path:  # only the fit's first epoch looks for a resume
            return
        state = read_json(self.state_path)
        if not state or state.get("epochs_done") != epoch or state.get("plan") != self._plan():
            return  # no killed fit of this plan ended at the epoch before this one
        self.before, self.first_epoch_s = float(state["spent_s"]), float(state["epoch_s"])
        last = state.get("decay_ends_at_epoch")
        if last and self.planned and self.steps:
            self._end_decay_at(int(last), self.first_epoch_s, resumed=True)
        log(
            f"{self.stage}: resumed with {self.before:.0f}s of the time budget "
            f"({self.seconds / 60:.1f} min) spent"
            + (f"; the cosine decay still ends at epoch {self.replanned_to}" if last else "")
        )

    def on_epoch_end(self, epoch, logs=None):
        now = self.clock()
        spent, per_epoch = now - self.t0 + self.before, now - self.t_epoch
        if self.ran == 0 and self.first_epoch_s:  # the first epoch traces the step again
            per_epoch = min(per_epoch, self.first_epoch_s)
        self.t_epoch, self.ran = now, self.ran + 1
        try:
            if self.model.stop_training:  # early stopping came first
                return
            if spent + per_epoch > self.seconds or epoch + 1 >= (self.replanned_to or 1e9):
                self.model.stop_training = True
                self.stopped_at = epoch + 1
                log(
                    f"{self.stage}: time budget ({self.seconds / 60:.1f} min) reached after "
                    f"epoch {epoch + 1} ({spent:.0f}s); stopping"
                )
                return
            last = epoch + 1 + int((self.seconds - spent) // per_epoch)  # the last that fits
            if self.ran > 1 and self.replanned_to is None and self.planned and self.steps:
                if last < self.planned:
                    self._end_decay_at(last, per_epoch)
        finally:
            self._save(epoch + 1, spent, per_epoch)

    def on_train_end(self, logs=None):
        if self.state_path and os.path.exists(self.state_path):
            os.remove(self.state_path)  # the fit ended: nothing left to resume

    def _save(self, epochs_done: int, spent: float, per_epoch: float) -> None:
        if self.state_path:
            write_json_atomic(
                self.state_path,
                {"epochs_done": epochs_done, "spent_s": round(spent, 2),
                 "epoch_s": round(per_epoch, 2), "decay_ends_at_epoch": self.replanned_to,
                 "plan": self._plan()},
            )  # fmt: skip

    def _end_decay_at(self, last: int, per_epoch: float, resumed: bool = False) -> None:
        opt = self.model.optimizer
        sched = getattr(getattr(opt, "inner_optimizer", opt), "_learning_rate", None)
        if not isinstance(sched, keras.optimizers.schedules.CosineDecay):
            return
        steps = max(1, last * self.steps - sched.warmup_steps)
        if steps >= sched.decay_steps:
            return
        sched.decay_steps = steps
        self.model.make_train_function(force=True)  # the step reads decay_steps when traced
        self.replanned_to = last
        if resumed:  # on_epoch_begin says so
            return
        log(
            f"{self.stage}: at ~{per_epoch:.0f}s an epoch, {last} of the {self.planned} planned "
            f"epochs fit the time budget ({self.seconds / 60:.1f} min): the cosine decay now "
            f"ends at epoch {last}",
            level="warn",
        )


@dataclass
class _TuneRun:
    """One fine_tune stage's inputs, dirs and settings, handed to its phases as one."""

    examples_dir: str
    head_dir: str
    out_dir: str
    wdir: str
    strategy: tf.distribute.Strategy
    train: TrainConfig
    cfg: FineTuneConfig  # learning_rate replaced by the LR range test's, when it found one
    augment: AugmentConfig
    image_size: int
    validation_dir: str | None
    head_cfg: TrainHeadConfig
    geometry: gdata.Geometry


def _fold_evidence(run: _TuneRun, small: bool) -> dict | None:
    """components.cv_guard's out-of-fold hits when the data is small and one process trains."""
    cfg, strategy, wdir, head_dir = run.cfg, run.strategy, run.wdir, run.head_dir
    if not small or not cfg.guard_folds:
        return None
    if strategy.num_replicas_in_sync > 1 or gmodel.worker_count(strategy) > 1:
        log("fine_tune: guard: no cross-validation under a distribution strategy; val only")
        return None
    from graft.components import cv_guard

    hist = read_history(wdir)
    best = min(range(len(hist)), key=lambda i: hist[i].get("val_loss", math.inf)) if hist else 0
    head = finished(head_dir)
    return cv_guard.fold_evidence(
        run.examples_dir,
        os.path.join(head_dir, MODEL),
        wdir,
        cfg=cfg,
        head_cfg=run.head_cfg,
        head_epochs=max(1, head.epochs_run if head else run.head_cfg.epochs),
        feature_store=head.extra.feature_store if head else None,
        tune_epochs=max(1, best + 1 if cfg.patience else len(hist)),
        augment=run.augment,
        image_size=run.image_size,
        geometry=run.geometry,
        exclude_train=excluded_from_train(run.validation_dir) or set(),
        seed=run.train.seed,
        jit=_jit(run.train),
        deterministic=run.train.deterministic,
    )


def fine_tune(
    examples_dir: str,
    head_dir: str,
    out_dir: str,
    *,
    train: TrainConfig,
    cfg: FineTuneConfig,
    augment: AugmentConfig,
    image_size: int,
    validation_dir: str | None = None,
    extra_callbacks: list | None = None,
    head_cfg: TrainHeadConfig | None = None,
    skip_reason: str = "fine_tune.enabled: false",
    geometry: gdata.Geometry = gdata.SQUASH,
    refit_reason: str = "",
) -> StageResult:
    """Unfreeze the base as cfg.unfreeze says (BN stays frozen), train at a low LR, keep the
    result only if better. With fine-tuning off the head passes through; `skip_reason` says
    why (the user's setting, or advise's plan) in the log and the report. With fine-tuning off
    and train_head.refit: always, a fresh head refit on train + val for the epochs the head
    stage's early stopping chose passes instead; `refit_reason` says why it was (not) refit.

    Args:
        examples_dir: the ingest step's output.
        head_dir: the train_head stage's output, whose model is the starting point.
        out_dir: the stage's output; a finished one is returned as it is.
        train: the `train` section (seed, batch, precision, distribution).
        cfg: the `fine_tune` section (enabled, unfreeze, rate, epochs, guard).
        augment: the `augment` section.
        image_size: the model's input size in pixels.
        validation_dir: the validate step's output (images left out), or None.
        extra_callbacks: Keras callbacks added to the fit, or None.
        head_cfg: the `train_head` section, for the guard's cross-validation; None: defaults.
        skip_reason: why fine-tuning is off, when it is.
        geometry: how images are fitted to the input size.
        refit_reason: why train_head.refit is what it is (advise's evidence or the config).

    Returns:
        The StageResult: with FineTuneDetails in `extra` (the guard's decision on which model
        is kept), or with FineTuneSkipped when the head model passed through untuned.
    """
    strategy = gmodel.choose_strategy(train)  # first: MultiWorker must precede any TF op
    done = start_stage(out_dir, "fine_tune", train, gmodel.is_chief(strategy))
    if done:
        return done
    wdir = write_dir(out_dir, strategy)
    run = _TuneRun(
        examples_dir,
        head_dir,
        out_dir,
        wdir,
        strategy,
        train,
        cfg,
        augment,
        image_size,
        validation_dir,
        head_cfg or TrainHeadConfig(),
        geometry,
    )
    try:
        return _fine_tune(run, extra_callbacks, skip_reason, refit_reason)
    finally:
        release(wdir, out_dir)


@dataclass
class _Guard:
    """The guard's decision: the model kept, and the paired gain (beyond_noise: judged on it;
    better: recorded beside the point estimate it decides by)."""

    kept: str = "fine_tuned"
    gain: dict | None = None  # on the evidence below: k folds + val, or val alone
    val_gain: dict | None = None  # on val alone
    folds: dict | None = None
    evidence: str | None = None  # what the gain was measured on


def _fine_tune(run: _TuneRun, extra_callbacks, skip_reason, refit_reason) -> StageResult:
    t0 = time.time()
    train, strategy = run.train, run.strategy
    if run.cfg.enabled and run.head_cfg.refit == "always":
        raise ValueError(
            "train_head.refit: always refits the head-only model, but fine_tune.enabled is "
            "true; set fine_tune.enabled: false to ship a refit head, or train_head.refit: never"
        )
    precision = gmodel.set_precision(train)
    exclude = excluded_from_eval(run.validation_dir)
    workers = gmodel.worker_count(strategy)
    val_ds = gdata.image_dataset(
        run.examples_dir,
        "val",
        run.image_size,
        run.cfg.batch_size,
        exclude_sha256=exclude,
        workers=workers,
        geometry=run.geometry,
    )
    if not run.cfg.enabled:
        return _pass_head_through(run, val_ds, precision, skip_reason, refit_reason)
    with strategy.scope():
        model = gmodel.multi_worker_keras(load_model(_head_model(run)), strategy)
    t_val = time.time()
    head_scores = scores_on(model, val_ds)
    val_s = time.time() - t_val
    train_ds, fit_steps = _fine_tune_train_data(run, workers)
    with strategy.scope():
        info = gmodel.unfreeze(model, run.cfg.unfreeze)
    steps = max(1, fit_steps or int(train_ds.cardinality()))
    depth = glayer.depths(model) if run.cfg.staged else None
    found = _find_rate(
        model, train_ds, run.cfg, run.wdir, strategy, workers, steps, depth, _jit(train)
    )
    if found:
        run.cfg = run.cfg.model_copy(update={"learning_rate": found["used"]})
    plan = _epochs_that_fit(run, steps, val_s)
    stages_text = _compile_for_fine_tune(model, run, info, steps, head_scores, found)
    cw = class_weights(
        run.examples_dir,
        model.output_shape[-1],
        run.head_cfg.class_weight,
        excluded_from_train(run.validation_dir),
    )
    cbs, elog = _fine_tune_callbacks(run, depth, extra_callbacks, steps, plan)
    model.fit(
        train_ds,
        epochs=run.cfg.epochs,
        steps_per_epoch=fit_steps,
        validation_data=val_ds,
        class_weight=cw,
        callbacks=cbs,
        verbose=0,
    )
    tuned_scores = scores_on(model, val_ds)
    guard = _guard(run, head_scores, tuned_scores)
    _save_kept(model, run, guard.kept)
    hist = read_history(run.wdir)
    kept_scores = head_scores if guard.kept == "head" else tuned_scores
    res = StageResult(
        stage="fine_tune",
        model_path=os.path.join(run.out_dir, MODEL),
        best_val_accuracy=kept_scores[0],
        best_val_loss=kept_scores[1],
        epochs_run=len(hist),
        resumed_from_epoch=elog.first_epoch or 0,
        seconds=round(time.time() - t0, 2),
        precision=precision,
        extra=_fine_tune_details(
            run, guard, head_scores, tuned_scores, info, found, stages_text, train_ds
        ),
    )
    res.extra.time_budget = _time_budget_record(cbs, run.cfg, plan)
    log(
        f"fine_tune: val_accuracy head {head_scores[0]:.3f} -> fine-tuned "
        f"{tuned_scores[0]:.3f}; kept {guard.kept} ({res.seconds:.1f}s)",
        level="ok",
    )
    return finish(run.wdir, res, "fine-tune stage")


def _time_budget_record(cbs: list, cfg: FineTuneConfig, plan: dict | None) -> dict | None:
    """result.json's account of fine_tune.max_minutes; None when no budget was set."""
    budget = next((c for c in cbs if isinstance(c, TimeBudget)), None)
    if budget is None:
        return None
    return {
        "minutes": cfg.max_minutes,
        "start_plan": plan,
        "stopped_after_epoch": budget.stopped_at,
        "decay_replanned_to_end_at_epoch": budget.replanned_to,
    }


def epochs_that_fit(minutes: float, batch_s: float, steps: int, val_s: float) -> int:
    """Whole epochs of `steps` training batches of `batch_s` seconds and a validation pass of
    `val_s` within `minutes`; at least 1.

    Args:
        minutes: the fit's time budget (fine_tune.max_minutes).
        batch_s: a training batch's measured seconds.
        steps: batches per epoch.
        val_s: the validation pass's seconds.

    Returns:
        The number of epochs that fit, at least 1.
    """
    return max(1, int(minutes * 60 // (batch_s * steps + val_s)))


def _epochs_that_fit(run: _TuneRun, steps: int, val_s: float) -> dict | None:
    """With fine_tune.max_minutes and a cosine decay on one process, the epochs that fit by
    the LR range test's measured training batches (advise plans from forward passes: an
    epoch took 1.7x its estimate on flowers and chest_xray), so that the decay is planned
    over them from the first step instead of re-planned after epoch 2. The fit traces its
    step again, once: the range test's tracing time is paid first. Kept in epoch_plan.json
    with what it was planned from: a resumed stage keeps the plan its backup trained on."""
    cfg, path = run.cfg, os.path.join(run.wdir, "epoch_plan.json")
    if not (cfg.max_minutes and cfg.cosine_decay) or gmodel.worker_count(run.strategy) > 1:
        return None  # workers would each plan from their own clocks
    basis = {"minutes": cfg.max_minutes, "planned_epochs": cfg.epochs, "steps": steps}
    plan = read_json(path)
    if plan is None or plan.get("basis") != basis:
        found = read_json(os.path.join(run.wdir, "lr_find.json")) or {}
        batch_s, trace_s = found.get("batch_seconds"), found.get("trace_seconds") or 0.0
        if not batch_s:
            return None
        epoch_s = batch_s * steps + val_s
        fit = epochs_that_fit(max(0.0, cfg.max_minutes - trace_s / 60), batch_s, steps, val_s)
        plan = {
            "basis": basis,
            "planned_epochs": cfg.epochs,
            "epochs": min(cfg.epochs, fit),
            "epoch_seconds": round(epoch_s, 1),
            "batch_seconds": batch_s,
            "trace_seconds": round(trace_s, 1),
            "val_seconds": round(val_s, 1),
        }
        write_json_atomic(path, plan)
    if plan["epochs"] < cfg.epochs and plan["epochs"] <= cfg.warmup_epochs:
        log(
            f"fine_tune: {plan['epochs']} of the {cfg.epochs} planned epochs fit the time "
            f"budget, no more than fine_tune.warmup_epochs ({cfg.warmup_epochs:g}): the plan "
            "is kept, and the budget stops it",
            level="warn",
        )
    elif plan["epochs"] < cfg.epochs:
        log(
            f"fine_tune: at ~{plan['epoch_seconds']:.0f}s an epoch (the range test's batches "
            f"took {plan['batch_seconds']:.3g}s each, validation {plan['val_seconds']:.0f}s), "
            f"{plan['epochs']} of the {cfg.epochs} planned epochs fit the time budget "
            f"({cfg.max_minutes:.1f} min): the cosine decay is planned over {plan['epochs']}",
            level="warn",
        )
        run.cfg = cfg.model_copy(update={"epochs": plan["epochs"]})
    return plan


def _head_model(run: _TuneRun) -> str:
    return os.path.join(run.head_dir, MODEL)


def _fine_tune_train_data(run: _TuneRun, workers: int) -> tuple[tf.data.Dataset, int | None]:
    """The shuffled (augmented) train split, and its steps per epoch."""
    train_ds = gdata.image_dataset(
        run.examples_dir,
        "train",
        run.image_size,
        run.cfg.batch_size,
        shuffle=True,
        augment=run.augment if run.cfg.augment else None,
        seed=run.train.seed,
        exclude_sha256=excluded_from_train(run.validation_dir),
        deterministic=run.train.deterministic,
        workers=workers,
        geometry=run.geometry,
    )
    # image_dataset carries its length, except a FILE-sharded one, which repeats
    fit_steps = gdata.steps_per_epoch(
        train_ds,
        run.examples_dir,
        "train",
        run.cfg.batch_size,
        excluded_from_train(run.validation_dir),
    )
    return train_ds, fit_steps


def _fine_tune_details(
    run: _TuneRun, guard, head_scores, tuned_scores, info, found, stages_text, train_ds
) -> FineTuneDetails:
    """result.json's account of the guard's decision and of how fine-tuning ran."""
    folds = guard.folds
    return FineTuneDetails(
        guard="kept_head" if guard.kept == "head" else ("accepted" if run.cfg.guard else "off"),
        guard_rule=run.cfg.guard_rule if run.cfg.guard else None,
        kept=guard.kept,
        head_val_accuracy=head_scores[0],
        fine_tuned_val_accuracy=tuned_scores[0],
        head_val_loss=head_scores[1],
        fine_tuned_val_loss=tuned_scores[1],
        val_gain=guard.gain,
        val_only_gain=guard.val_gain if folds else None,
        gain_evidence=guard.evidence,
        cross_validation=folds
        and {k: folds[k] for k in ("k", "folds", "seconds", "features_computed")},
        unfreeze=info,
        learning_rate=run.cfg.learning_rate,
        lr_find=found,
        stage_rates=stages_text,
        deterministic=run.train.deterministic,
        distribution=distribution(
            run.strategy, train_ds.options().experimental_distribute.auto_shard_policy
        ),
        shipped=SHIPPED_HEAD
        if guard.kept == "head"
        else (SHIPPED_TUNED if run.cfg.guard else SHIPPED_UNGUARDED),
    )


def _pass_head_through(run: _TuneRun, val_ds, precision, skip_reason, refit_reason) -> StageResult:
    """Fine-tuning off: the head model is copied as it is, scored by the head stage; or, with
    train_head.refit: always, a head refit on train + val takes its place (no val score: val
    is in its training data)."""
    head_model_path = _head_model(run)
    tf.io.gfile.copy(head_model_path, os.path.join(run.wdir, MODEL), overwrite=True)
    head_res = finished(run.head_dir)
    saved = head_res.extra.saved_val if head_res else None
    if saved:
        acc, loss = saved["accuracy"], saved["loss"]
    else:
        acc, loss, _ = scores_on(load_model(head_model_path), val_ds)
    refit = _refit_head(run, head_res) if run.head_cfg.refit == "always" else None
    if refit:
        acc = loss = float("nan")  # val trained the shipped head: no held-out val score
    shipped = refit["shipped"] if refit else SHIPPED_HEAD
    res = StageResult(
        stage="fine_tune",
        model_path=os.path.join(run.out_dir, MODEL),
        best_val_accuracy=acc,
        best_val_loss=loss,
        epochs_run=0,
        precision=precision,
        extra=FineTuneSkipped(
            skipped=skip_reason,
            shipped=shipped,
            shipped_why=refit_reason or f"train_head.refit: {run.head_cfg.refit}",
            refit=refit,
        ),
    )
    log(f"fine_tune: skipped ({skip_reason}); shipping the {shipped} ({res.extra.shipped_why})")
    return finish(run.wdir, res, "fine-tune (skipped)")


def _refit_features(run: _TuneRun, model, store: dict | None):
    """Train and val pooled features of the head's input layers, through the head stage's
    store: val without the images validate left out of evaluation (leaked or conflicting)."""
    from graft.components import features as gfeat

    base = gmodel.base_of(model)
    layers = gmodel.feature_layers(base)  # a multi-depth head reads several, side by side
    extractor = gfeat.pooled_extractor(base, model.get_layer("preprocess"), layers)
    fs = None
    if store:
        fs = gfeat.FeatureStore(store["root"], store["fingerprint"], run.image_size, run.geometry)
    excl = {
        "train": excluded_from_train(run.validation_dir),
        "val": excluded_from_eval(run.validation_dir) | excluded_from_train(run.validation_dir),
    }
    got = {
        split: gfeat.split_features(
            run.examples_dir, split, layers, extractor=extractor, store=fs,
            exclude=excl[split], batch_size=feature_batch(), stage="fine_tune: refit",
            geometry=run.geometry,
        )
        for split in ("train", "val")
    }  # fmt: skip
    t, v = got["train"], got["val"]
    return t.joined(layers), t.y, v.joined(layers), v.y


def _refit_class_weights(y: np.ndarray, num_classes: int, head_weights) -> dict | None:
    """n / (C * n_c) over train + val when the head stage weighted its classes, else None."""
    if not head_weights:
        return None
    counts = np.bincount(y, minlength=num_classes)
    return {i: len(y) / (num_classes * max(1, int(c))) for i, c in enumerate(counts)}


def _refit_head(run: _TuneRun, head_res: StageResult | None) -> dict:
    """A fresh head (re-initialised with train.seed, the head stage's settings) on the frozen
    base's train + val features for the epochs the head stage's early stopping kept: val
    picked the epochs, then joins the training data. Saved over the copied head model."""
    hcfg = run.head_cfg
    if head_res is None or not head_res.cache_used or hcfg.augment:
        raise ValueError(
            "train_head.refit: always refits the head on stored plain features, but the head "
            "stage trained on images (train_head.augment or feature_cache: off)"
        )
    t0 = time.time()
    epochs = refit_epochs(read_history(run.head_dir), hcfg.patience)
    model = load_model(_head_model(run))
    xt, yt, xv, yv = _refit_features(run, model, head_res.extra.feature_store)
    x, y = np.concatenate([xt, xv]), np.concatenate([yt, yv])
    _fit_normalizer(model, x)
    head = gmodel.head_of(model)
    reinitialise(head, run.train.seed)
    trainer = gmodel.pooled_head(head, x.shape[1])
    gmodel.compile_for_fit(
        trainer, make_optimizer(hcfg.optimizer, hcfg.learning_rate), metrics=False
    )
    cw = _refit_class_weights(y, model.output_shape[-1], head_res.extra.class_weight)
    trainer.fit(x, y, batch_size=hcfg.batch_size, epochs=max(1, epochs), class_weight=cw, verbose=0)
    _compile_stock(model, tf.distribute.get_strategy(), hcfg.optimizer, hcfg.learning_rate)
    model.save(os.path.join(run.wdir, MODEL))
    refit = {
        "images": len(y),
        "train_images": len(yt),
        "val_images": len(yv),
        "epochs": max(1, epochs),
        "head_epochs_run": head_res.epochs_run,
        "class_weight": cw,
        "seconds": round(time.time() - t0, 2),
    }
    refit["shipped"] = (
        f"head refit on train+val ({refit['images']} images, {refit['epochs']} epochs)"
    )
    log(
        f"fine_tune: refit a fresh head on train + val ({len(yt)} + {len(yv)} images) for "
        f"{refit['epochs']} epoch(s), the head stage's best by val_loss of "
        f"{head_res.epochs_run} run ({refit['seconds']:.1f}s)",
        level="ok",
    )
    return refit


def _compile_for_fine_tune(model, run: _TuneRun, info, steps, head_scores, found):
    """Compile at the (found) rate and say what is unfrozen; the per-stage rates' text or None."""
    cfg = run.cfg
    with run.strategy.scope():
        gmodel.compile_for_fit(model, glayer.fine_tune_optimizer(cfg, steps), jit=_jit(run.train))
    log(
        f"fine_tune: head-only val_accuracy {head_scores[0]:.3f}; unfreezing "
        f"{gmodel.unfreeze_text(info)} (fine_tune.unfreeze.mode: {cfg.unfreeze.mode}); "
        f"{cfg.optimizer} lr {cfg.learning_rate:g}" + (" (LR range test)" if found else "")
    )
    if not cfg.staged:
        return None
    stages_text = glayer.schedule_text(model, info, cfg.layer_lr_decay, cfg.unfreeze.gradual_epochs)
    log(f"fine_tune: per-stage rates: {stages_text}")
    return stages_text


def _fine_tune_callbacks(run: _TuneRun, depth, extra_callbacks, steps: int, plan=None):
    """The stage's callbacks plus the staged rates and the time budget, when set."""
    cfg = run.cfg
    cbs, elog = callbacks(run.wdir, "fine_tune", cfg.epochs, cfg.patience, run.out_dir)
    if cfg.staged:
        cbs.insert(0, glayer.StageRates(depth, cfg.layer_lr_decay, cfg.unfreeze.gradual_epochs))
    if cfg.max_minutes:
        # re-plan a cosine decay on one process only: workers' clocks could re-plan differently
        one = gmodel.worker_count(run.strategy) == 1
        replan = cfg.cosine_decay and one
        cbs.append(
            TimeBudget(
                cfg.max_minutes,
                "fine_tune",
                epochs=cfg.epochs if replan else None,
                steps_per_epoch=steps,
                # one process: its spent seconds (and a re-plan) carry over a resume, with or
                # without a decay to re-plan
                state_path=os.path.join(run.wdir, "time_budget.json") if one else None,
                first_epoch_s=(plan or {}).get("epoch_seconds"),
            )
        )
    cbs += extra_callbacks or []
    return cbs, elog


def _guard(run: _TuneRun, head_scores, tuned_scores) -> _Guard:
    """Which model the guard keeps: the simpler head unless fine-tuning did better."""
    cfg = run.cfg
    n_train = gdata.count_examples(
        run.examples_dir, "train", excluded_from_train(run.validation_dir)
    )
    small = n_train < cfg.guard_cv_below
    head_hits, ft_hits = head_scores[2], tuned_scores[2]
    noise_rule = cfg.guard and cfg.guard_rule == "beyond_noise"
    if cfg.guard and not noise_rule and small:
        log(
            f"fine_tune: the guard decides on one val split of {len(ft_hits)} images "
            f"({n_train} training images; fine_tune.guard_rule: better); guard_rule "
            "beyond_noise decides on k-fold cross-validated evidence and keeps the simpler "
            "model inside the noise",
            level="warn",
        )
    if noise_rule:
        return _guard_beyond_noise(
            ft_hits, head_hits, lambda: _fold_evidence(run, small), cfg.guard_level
        )
    return _guard_better(head_scores, tuned_scores) if cfg.guard else _Guard()


def _guard_better(head_scores, tuned_scores) -> _Guard:
    """guard_rule better: the fine-tuned model unless it scored lower on val (a tie: the lower
    val loss); the paired gain goes on the record beside the decision, not into it."""
    from graft.components.stats import paired_difference

    (head_acc, head_loss, head_hits), (ft_acc, ft_loss, ft_hits) = head_scores, tuned_scores
    guard = _Guard()
    if len(ft_hits) and len(ft_hits) == len(head_hits):
        guard.gain = guard.val_gain = paired_difference(ft_hits, head_hits)
        guard.evidence = f"{len(ft_hits)} val images"
    said = f"fine-tuned val_accuracy {ft_acc:.3f}, head-only {head_acc:.3f}"
    said += _gain_words(guard.gain)
    if ft_acc < head_acc or (ft_acc == head_acc and ft_loss > head_loss):
        guard.kept = "head"
        log(f"fine_tune: GUARD: {said}; keeping the head-only weights", level="warn")
    else:
        log(f"fine_tune: guard: {said}; fine_tune.guard_rule: better keeps the fine-tuned model")
    return guard


def _gain_words(gain: dict | None) -> str:
    """`, paired gain +0.017 [-0.006, +0.041]`, or nothing without a paired gain."""
    if not gain:
        return ""
    return f", paired gain {gain['difference']:+.3f} [{gain['low']:+.3f}, {gain['high']:+.3f}]"


def _guard_beyond_noise(ft_hits, head_hits, folds_of, level: float) -> _Guard:
    """guard_rule beyond_noise: keep fine-tuning only if its paired gain's one-sided `level`
    bound clears 0, measured on k folds of the training data too when it is small. The 95%
    interval (a 97.5% bound) kept the head on flowers at val +0.033 and +0.036 (642 images),
    where the runs whose fine-tuning passed scored +0.054 and +0.061 over the head on test."""
    from graft.components.stats import paired_difference

    def gain_of(tuned, head) -> dict:
        gain = paired_difference(tuned, head)  # its 95% interval, for the report
        gain["bound"] = paired_difference(tuned, head, level=2 * level - 1)["low"]
        gain["bound_level"] = level
        return gain

    guard = _Guard(evidence=f"{len(ft_hits)} val images")
    guard.gain = guard.val_gain = gain_of(ft_hits, head_hits)
    guard.folds = folds = folds_of()
    if folds:
        guard.gain = gain_of(
            np.concatenate([folds["tuned"], ft_hits]),
            np.concatenate([folds["head"], head_hits]),
        )
        guard.evidence = (
            f"{folds['k']}-fold cross-validation on {len(folds['head'])} training images "
            f"+ {len(ft_hits)} val images"
        )
    gain, evidence = guard.gain, guard.evidence
    said = (
        f"gain {gain['difference']:+.3f} (95% paired interval [{gain['low']:+.3f}, "
        f"{gain['high']:+.3f}], one-sided {level:.1%} bound {gain['bound']:+.3f}; {evidence})"
    )
    if gain["bound"] <= 0:
        guard.kept = "head"
        log(
            f"fine_tune: GUARD: {said} is inside the noise; keeping the simpler head-only "
            f"model (fine_tune.guard_rule: beyond_noise, guard_level {level:g})",
            level="warn",
        )
    else:
        log(f"fine_tune: guard: {said} is beyond the noise")
    return guard


def _save_kept(model, run: _TuneRun, kept: str) -> None:
    """The kept model into the stage dir: the head's file, or the fine-tuned weights."""
    if kept == "head":
        tf.io.gfile.copy(_head_model(run), os.path.join(run.wdir, MODEL), overwrite=True)
        return
    cfg = run.cfg
    if cfg.staged:  # saved with a stock optimizer: plain Keras loads the file without graft
        _compile_stock(model, run.strategy, cfg.optimizer, cfg.learning_rate, cfg.momentum)
    model.save(os.path.join(run.wdir, MODEL))
