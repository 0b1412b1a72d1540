"""Both training stages on real TFRecords: frozen means frozen, cache, guard, resume, transfer."""

import json
import shutil
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import REPO, SHALLOW_LAYER, SHALLOW_WEIGHTS, TINY_BASE

from graft.components import model as gmodel
from graft.components.demo_data import generate
from graft.components.ingest import ingest
from graft.components.train import fine_tune, load_model, train_head
from graft.core.backbones import BACKBONES
from graft.core.config import (
    AugmentConfig,
    BaseConfig,
    DataConfig,
    FineTuneConfig,
    HeadConfig,
    TrainConfig,
    TrainHeadConfig,
)

DEMO_BASE = str(REPO / "graft" / "assets" / "demo_base.weights.h5")
SHALLOW = BaseConfig(**TINY_BASE)  # the demo recipe pretrained up to SHALLOW_LAYER, cut there
RANDOM = BaseConfig(weights=None, kwargs={"alpha": 0.35}, cut_at=SHALLOW_LAYER)  # same shape
NO_AUG = AugmentConfig(flip="none", rotation=0, zoom=0, contrast=0, translation=0)


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> str:
    """3 demo classes x 80 at 64 px, ingested."""
    tmp = tmp_path_factory.mktemp("train")
    generate(tmp / "imgs", classes=3, per_class=80, size=64, seed=7)
    ingest(DataConfig(path=str(tmp / "imgs"), num_workers=1), str(tmp / "ex"))
    return str(tmp / "ex")


def _head(examples, out, size=32, base=None, **kw):
    cfg = TrainHeadConfig(**{"epochs": 3, "batch_size": 16, "patience": 0, **kw})
    return train_head(
        examples,
        str(out),
        base=base or RANDOM,
        head=HeadConfig(),
        train=TrainConfig(),
        cfg=cfg,
        augment=NO_AUG,
        image_size=size,
    )


def _weights(layer) -> list[np.ndarray]:
    return [np.array(w) for w in layer.weights]


@pytest.mark.slow
def test_head_stage_leaves_base_bit_identical(examples, tmp_path):
    keras.utils.set_random_seed(1)
    base0 = keras.applications.MobileNetV2(
        include_top=False, weights=None, alpha=0.35, input_shape=(32, 32, 3)
    )
    path = tmp_path / "init.weights.h5"
    base0.save_weights(path)
    base_cfg = BaseConfig(weights=str(path), kwargs={"alpha": 0.35}, cut_at=SHALLOW_LAYER)
    for cache in ("on", "off"):
        r = _head(examples, tmp_path / cache, base=base_cfg, feature_cache=cache)
        trained = gmodel.base_of(load_model(r.model_path))
        assert trained.layers[-1].name == SHALLOW_LAYER
        n_bn = 0
        for after in [la for la in trained.layers if la.weights]:  # each against the saved init
            before = base0.get_layer(after.name)
            for a, b in zip(_weights(before), _weights(after), strict=True):
                assert np.array_equal(a, b), f"{cache}: {after.name} changed"
            n_bn += isinstance(after, keras.layers.BatchNormalization)
        assert n_bn == 19  # moving means/variances were among the compared weights


@pytest.mark.slow
def test_fine_tune_changes_only_unfrozen_non_bn_layers(examples, tmp_path):
    head = _head(examples, tmp_path / "head")
    ft = fine_tune(
        examples,
        str(tmp_path / "head"),
        str(tmp_path / "ft"),
        train=TrainConfig(),
        cfg=FineTuneConfig(
            epochs=1,
            batch_size=16,
            guard=False,
            learning_rate=1e-3,
            unfreeze={"mode": "from_layer", "from_layer": "block_5_expand"},
        ),
        augment=NO_AUG,
        image_size=32,
    )
    before = gmodel.base_of(load_model(head.model_path))
    after = gmodel.base_of(load_model(ft.model_path))
    start = [layer.name for layer in after.layers].index("block_5_expand")
    changed = 0
    for i, (a, b) in enumerate(zip(before.layers, after.layers, strict=True)):
        same = all(np.array_equal(x, y) for x, y in zip(_weights(a), _weights(b), strict=True))
        if i < start or isinstance(b, keras.layers.BatchNormalization):
            assert same, f"{b.name} (index {i}) should be frozen"
        elif b.weights:
            changed += not same
    assert changed >= 3
    assert ft.extra.unfreeze["from_layer"] == "block_5_expand"


@pytest.mark.slow
def test_cached_and_uncached_reach_same_accuracy_and_cache_is_faster(examples, tmp_path):
    """No dropout, one full batch per epoch: both paths take the same Adam steps from one init.
    48 px and 10 epochs (were 64 px and 25: the uncached run alone took 140 s, busy)."""
    from graft.components import data as gdata
    from graft.components.train import scores_on

    base = SHALLOW
    runs = {}
    for cache in ("on", "off"):
        t0 = time.time()
        r = train_head(
            examples,
            str(tmp_path / cache),
            base=base,
            head=HeadConfig(dropout=0.0),
            train=TrainConfig(),
            augment=NO_AUG,
            image_size=48,
            cfg=TrainHeadConfig(
                epochs=10, batch_size=1024, patience=0, learning_rate=0.005, feature_cache=cache
            ),
        )
        runs[cache] = (r, time.time() - t0)
    val = gdata.image_dataset(examples, "val", 48, 32)
    acc = {c: scores_on(load_model(r.model_path), val)[0] for c, (r, _) in runs.items()}
    print(
        f"\nhead stage, 10 full-batch epochs: cached {runs['on'][1]:.1f}s val_acc {acc['on']:.3f}; "
        f"uncached {runs['off'][1]:.1f}s val_acc {acc['off']:.3f}"
    )
    assert runs["on"][0].cache_used and not runs["off"][0].cache_used
    assert abs(acc["on"] - acc["off"]) <= 0.03 + 1e-9
    assert runs["on"][1] < runs["off"][1]
    a, b = (
        load_model(runs["on"][0].model_path),
        load_model(runs["off"][0].model_path),
    )  # same layout
    assert [w.path for w in a.weights] == [w.path for w in b.weights]
    assert [w.shape for w in a.weights] == [w.shape for w in b.weights]
    for wa, wb in zip(
        a.weights, b.weights, strict=True
    ):  # and the same head, up to float summation order
        np.testing.assert_allclose(np.array(wa), np.array(wb), atol=1e-3, err_msg=wa.path)


def test_training_dataset_has_known_length_so_each_epoch_is_exactly_its_steps(examples):
    """An unknown-length dataset makes Keras probe past the end of each epoch, and that probe
    increments optimizer.iterations: Adam's bias correction and LR schedules drift by a step
    per epoch (this was the cached/uncached mismatch)."""
    from graft.components import data as gdata

    ds = gdata.image_dataset(examples, "train", 32, 48, shuffle=True)
    n = gdata.count_examples(examples, "train")
    assert int(ds.cardinality()) == -(-n // 48)
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile(keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    model.fit(ds, epochs=3, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 3 * -(-n // 48)


@pytest.mark.slow
def test_guard_keeps_head_after_destructive_fine_tune(examples, tmp_path):
    head = _head(
        examples,
        tmp_path / "head",
        size=48,
        base=SHALLOW,
    )
    ft = fine_tune(
        examples,
        str(tmp_path / "head"),
        str(tmp_path / "ft"),
        train=TrainConfig(),
        cfg=FineTuneConfig(
            epochs=2,  # the time budget (0.06 s) stops it after the first
            max_minutes=0.001,
            batch_size=16,
            optimizer="sgd",
            learning_rate=1.0,
            cosine_decay=False,
            patience=0,
            unfreeze={"mode": "all"},
        ),
        augment=NO_AUG,
        image_size=48,
    )
    assert ft.extra.guard == "kept_head" and ft.extra.kept == "head"
    assert ft.epochs_run == 1 and ft.extra.time_budget == {
        "minutes": 0.001,
        "start_plan": None,  # no LR range test timed a batch, and no cosine decay to plan
        "stopped_after_epoch": 1,
        "decay_replanned_to_end_at_epoch": None,  # no cosine decay to re-plan
    }
    assert ft.extra.fine_tuned_val_accuracy < ft.extra.head_val_accuracy
    kept, orig = load_model(ft.model_path), load_model(head.model_path)
    for a, b in zip(kept.weights, orig.weights, strict=True):
        assert np.array_equal(np.array(a), np.array(b))
    assert (
        json.loads((tmp_path / "ft" / "result.json").read_text())["extra"]["guard"] == "kept_head"
    )


class _BoomAt(keras.callbacks.Callback):
    def __init__(self, epoch: int):
        super().__init__()
        self.at = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.at:
            raise RuntimeError(f"killed after epoch {epoch}")


def _three_epoch_head() -> dict:
    """train_head's settings for the kill-and-resume tests: 3 epochs, no early stopping."""
    return dict(
        base=RANDOM,
        head=HeadConfig(),
        train=TrainConfig(),
        cfg=TrainHeadConfig(epochs=3, batch_size=16, patience=0),
        augment=NO_AUG,
        image_size=32,
    )


@pytest.mark.slow
def test_killed_stage_resumes_at_next_epoch(examples, tmp_path):
    out = tmp_path / "head"
    cfg = _three_epoch_head()
    with pytest.raises(RuntimeError, match="killed after epoch 1"):
        train_head(examples, str(out), extra_callbacks=[_BoomAt(1)], **cfg)
    assert not (out / "result.json").exists() and (out / "backup").exists()
    r = train_head(examples, str(out), **cfg)
    assert r.resumed_from_epoch == 1
    epochs = [
        json.loads(line)["epoch"] for line in (out / "history.jsonl").read_text().splitlines()
    ]
    assert epochs == [1, 2, 3]
    again = train_head(examples, str(out), **cfg)  # finished: returned as is, not re-run
    assert again.seconds == r.seconds


@pytest.mark.slow
@pytest.mark.parametrize("torn", ["latest.weights.h5", "training_metadata.json"])
def test_a_backup_torn_by_a_kill_resumes_from_the_one_before(examples, tmp_path, torn):
    """A kill while Keras rewrote its checkpoint (the weights, or the epoch beside them) left it
    torn: every resume then failed until backup/ was deleted. The previous one is taken."""
    out = tmp_path / "head"
    cfg = _three_epoch_head()
    with pytest.raises(RuntimeError, match="killed after epoch 2"):
        train_head(examples, str(out), extra_callbacks=[_BoomAt(2)], **cfg)
    latest = out / "backup" / torn
    latest.write_bytes(latest.read_bytes()[:10])  # torn mid-write
    r = train_head(examples, str(out), **cfg)
    assert r.resumed_from_epoch == 1  # the epoch-1 checkpoint, kept beside the torn one
    epochs = [json.loads(x)["epoch"] for x in (out / "history.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]  # epoch 2's row from the killed attempt is not kept twice


def test_a_fit_that_starts_over_drops_the_rows_its_killed_attempt_logged(tmp_path):
    """Keras deletes its backup when a fit ends: a stage killed after that (before its
    result.json) fits again from epoch 0, and the old rows must not pass for the new fit's."""
    from graft.components.fitting import read_history
    from graft.components.train import EpochLog

    path = tmp_path / "history.jsonl"
    path.write_text("".join(json.dumps({"epoch": e, "loss": 1.0 / e}) + "\n" for e in (1, 2, 3)))
    EpochLog(str(path), "head", 5).on_epoch_begin(2)  # resumed after two epochs
    assert [r["epoch"] for r in read_history(str(tmp_path))] == [1, 2]
    EpochLog(str(path), "head", 5).on_epoch_begin(0)  # a fit from the start
    assert read_history(str(tmp_path)) == []


@pytest.mark.slow
def test_transfer_beats_scratch_on_demo(examples, tmp_path):
    """The tests' shallow demo base, head only, vs the same architecture from scratch, same
    epochs (the whole demo base transfers too: make demo, the recipe-auto tests)."""
    epochs = 6
    head = _head(
        examples,
        tmp_path / "head",
        size=64,
        epochs=epochs,
        base=SHALLOW,
    )
    keras.utils.set_random_seed(0)
    from graft.components import data as gdata

    model = gmodel.build_model(RANDOM, HeadConfig(), 3, 64)
    gmodel.base_of(model).trainable = True
    model.compile(
        keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    hist = model.fit(
        gdata.image_dataset(examples, "train", 64, 16, shuffle=True),
        epochs=epochs,
        verbose=0,
        validation_data=gdata.image_dataset(examples, "val", 64, 16),
    )
    scratch = max(hist.history["val_accuracy"])
    print(
        f"\nval accuracy after {epochs} epochs: transfer (head only) {head.best_val_accuracy:.3f} "
        f"vs scratch {scratch:.3f}"
    )
    assert head.best_val_accuracy > scratch


def test_cpu_scale_up_switches_are_no_ops():
    import tensorflow as tf

    assert gmodel.set_precision(TrainConfig(mixed_precision=True)) == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"
    assert gmodel.choose_strategy(TrainConfig()) is tf.distribute.get_strategy()


def test_unknown_layer_and_backbone_errors():
    model = gmodel.build_model(RANDOM, HeadConfig(), 2, 32)
    from graft.core.config import UnfreezeConfig

    with pytest.raises(ValueError, match="not a layer of.*inspect-base"):
        gmodel.unfreeze(model, UnfreezeConfig(mode="from_layer", from_layer="block_99_expand"))
    with pytest.raises(ValueError, match="unknown backbone 'nope'; valid:.*efficientnet_b0"):
        gmodel.backbone("nope")
    with pytest.raises(FileNotFoundError, match="base.weights file not found"):
        gmodel.build_base(BaseConfig(weights="/nonexistent.h5"), 32)


def test_inspect_base_names_block_boundaries(capsys):
    from graft.pipeline.cli import main

    assert main(["inspect-base", "mobilenet_v2", "--alpha", "0.35", "--size", "32"]) == 0
    out = capsys.readouterr().out
    assert "---- block block_13 (" in out and "block_13_expand" in out
    assert "from_layer: block_1" in out
    # flags it cannot honour: exit 2 naming the flag, not a config key the user never set
    assert main(["inspect-base", "mobilenet_v2", "--size", "16"]) == 2
    assert "--size 16: mobilenet_v2's inputs are at least 32 px" in capsys.readouterr().err
    assert main(["inspect-base", "resnet50", "--alpha", "0.5"]) == 2
    assert "--alpha is the MobileNets' width multiplier" in capsys.readouterr().err


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_registered_backbone_builds_offline_at_its_minimum_size(name):
    size = max(32, BACKBONES[name].min_size)
    base = gmodel.build_base(BaseConfig(name=name, weights=None), size)
    assert base.output_shape[-1] > 0 and not base.trainable
    with pytest.raises(ValueError, match="minimum"):
        gmodel.build_base(BaseConfig(name=name, weights=None), BACKBONES[name].min_size - 1)


def test_demo_base_weights_stay_small():
    assert Path(DEMO_BASE).stat().st_size < 3 * 1024 * 1024
    assert Path(SHALLOW_WEIGHTS).stat().st_size < 3 * 1024 * 1024


@pytest.mark.slow
def test_a_normalized_head_on_a_cut_base_scores_the_same_on_features_and_pixels(examples, tmp_path):
    """head.normalize (standardised pooled features) trains on the store's features; the whole
    model, fed pixels, must score val as the head did, and a disabled fine-tune reuses that."""
    from graft.components import data as gdata
    from graft.components.train import scores_on

    common = dict(
        base=SHALLOW,
        head=HeadConfig(normalize=True),
        train=TrainConfig(),
        augment=NO_AUG,
        image_size=48,
        feature_store=str(tmp_path / "store"),
    )
    head = train_head(
        examples,
        str(tmp_path / "head"),
        cfg=TrainHeadConfig(epochs=6, patience=0, feature_cache="on"),
        **common,
    )
    model = load_model(head.model_path)
    norm = gmodel.feature_normalizer(model)
    # fitted on the training features (a ReLU6 layer's channel means are > 0), saved, loaded
    assert isinstance(norm, keras.layers.Normalization)
    mean = np.array(norm.adapt_mean)
    assert mean.min() >= 0 and mean.max() > 0
    acc, loss, _ = scores_on(model, gdata.image_dataset(examples, "val", 48, 32))
    saved = head.extra.saved_val
    assert abs(acc - saved["accuracy"]) <= 0.02 and abs(loss - saved["loss"]) <= 0.02
    ft = fine_tune(
        examples,
        str(tmp_path / "head"),
        str(tmp_path / "ft"),
        train=TrainConfig(),
        cfg=FineTuneConfig(enabled=False),
        augment=NO_AUG,
        image_size=48,
    )
    assert (ft.best_val_accuracy, ft.best_val_loss) == (saved["accuracy"], saved["loss"])
    assert (tmp_path / "ft" / "model.keras").read_bytes() == Path(head.model_path).read_bytes()
    # the pixel path (no feature cache) fits the same statistics, from the store
    uncached = train_head(
        examples,
        str(tmp_path / "head_pixels"),
        cfg=TrainHeadConfig(epochs=1, patience=0, feature_cache="off"),
        **common,
    )
    other = gmodel.feature_normalizer(load_model(uncached.model_path))
    np.testing.assert_allclose(np.array(other.adapt_mean), np.array(norm.adapt_mean), rtol=1e-5)


def test_stage_results_read_back_as_typed_details(tmp_path):
    """result.json keeps the `extra` shape readers use; a finished stage reads back typed."""
    from dataclasses import asdict

    from graft.components.train import (
        FineTuneSkipped,
        HeadDetails,
        StageResult,
        finish,
        finished,
    )

    head = HeadDetails(
        class_weight=None,
        labels=["a", "b"],
        train_seconds=1.0,
        feature_seconds=0.5,
        features={"computed": 3, "reused": 1},
        feature_store=None,
        saved_val={"accuracy": 0.5, "loss": 0.7},
        deterministic=True,
        distribution={"workers": 1},
    )
    for stage, extra in (
        ("train_head", head),
        ("fine_tune", FineTuneSkipped(skipped="advise: small")),
    ):
        out = tmp_path / stage
        out.mkdir()
        res = StageResult(stage, str(out / "model.keras"), 0.5, 0.7, 0, extra=extra)
        finish(str(out), res, stage)
        on_disk = json.loads((out / "result.json").read_text())["extra"]
        assert on_disk == asdict(extra) and list(on_disk) == list(asdict(extra))
        assert finished(str(out)) == res
    assert on_disk == {
        "guard": "disabled",
        "kept": "head",
        "skipped": "advise: small",
        "shipped": None,
        "shipped_why": None,
        "refit": None,
    }


class _StepSizes(keras.callbacks.Callback):
    """How far each batch moved the weights (the rate the traced step really used, times the
    gradient)."""

    def on_train_begin(self, logs=None):
        self.last, self.sizes = np.concatenate([w.ravel() for w in self.model.get_weights()]), []

    def on_train_batch_end(self, batch, logs=None):
        now = np.concatenate([w.ravel() for w in self.model.get_weights()])
        self.sizes.append(float(np.abs(now - self.last).sum()))
        self.last = now


def _cosine_fit(
    budget: float | None, epochs: int = 4, first_epoch_s: int = 10, run: int = 3
) -> tuple[list[float], dict]:
    """A small Dense model fit by SGD on fixed data at a cosine rate planned over `epochs`;
    with a budget, TimeBudget on a clock whose first epoch takes `first_epoch_s` (the train
    step's tracing) and every later one 10 s; without, `run` epochs. Each step's size, and
    the fit's history."""
    from graft.components.train import TimeBudget

    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2, activation="softmax")])
    steps = 4  # batches of 16
    rate = keras.optimizers.schedules.CosineDecay(0.1, decay_steps=epochs * steps)
    model.compile(keras.optimizers.SGD(rate), "sparse_categorical_crossentropy")
    ticks = iter([0, *range(first_epoch_s, 1000, 10)])
    sizes = _StepSizes()
    cbs = [sizes]
    if budget is not None:
        clock = ticks.__next__
        cbs.append(TimeBudget(budget / 60, "t", epochs=epochs, steps_per_epoch=steps, clock=clock))
    hist = model.fit(
        x, y, batch_size=16, epochs=run if budget is None else epochs, shuffle=False,
        callbacks=cbs, verbose=0,
    )  # fmt: skip
    return sizes.sizes, hist.history


def test_a_time_budget_that_cuts_epochs_ends_the_cosine_decay_at_the_last_epoch_that_fits():
    # 10 s an epoch in 35 s: after epoch 2 (the first that does not trace), 3 of the 5 planned
    # epochs fit, so the decay is re-planned to end at epoch 3 (step 12) and training stops
    # there: the traced step's rate falls to ~0 by the last step (0.1 * (1 + cos(11/12 pi)) / 2
    # = 0.002), where the 5-epoch plan cut after 3 epochs still moved at 0.042
    cut, hist = _cosine_fit(budget=35, epochs=5)
    assert len(hist["loss"]) == 3
    uncut, _ = _cosine_fit(budget=None, epochs=5)  # the same plan cut after 3, not re-planned
    assert cut[:8] == pytest.approx(uncut[:8], rel=1e-5)  # epochs 1-2 ran on the plan as made
    assert cut[-1] < 0.1 * uncut[-1], (cut, uncut)
    # a slow first epoch (tracing: 20 s) does not count once a second one ran: in 45 s, 3
    # epochs fit (20 + 10 + 10), so the decay ends at epoch 3, where the average of the first
    # two (15 s) would have cut to 2
    _, hist = _cosine_fit(budget=45, first_epoch_s=20)
    assert len(hist["loss"]) == 3


class _KillAfter(keras.callbacks.Callback):
    """Raises after `epochs` epochs, as a killed pod ends a fit: no on_train_end (placed
    after the backup and TimeBudget, which have saved that epoch)."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 >= self.epochs:
            raise RuntimeError(f"killed after epoch {epoch + 1}")


def _resumable_fit(tmp: Path, backup: str, state: bool = True, kill: int = 0):
    """A 5-epoch cosine fit (10 s an epoch on a fake clock, 35 s budget) of a new model, as a
    restarted process makes it, with the stage's BackupAndRestore in `tmp / backup` and
    TimeBudget's state in tmp (or none); `kill` ends it after that many epochs. (step sizes,
    losses)."""
    from graft.components.train import TimeBudget

    steps, epochs = 4, 5
    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2, activation="softmax")])
    rate = keras.optimizers.schedules.CosineDecay(0.1, epochs * steps)
    model.compile(keras.optimizers.SGD(rate), "sparse_categorical_crossentropy")
    ticks = iter(range(0, 1000, 10))
    budget = TimeBudget(
        35 / 60, "t", epochs=epochs, steps_per_epoch=steps, clock=ticks.__next__,
        state_path=str(tmp / "time_budget.json") if state else None,
    )  # fmt: skip
    sizes, losses = _StepSizes(), keras.callbacks.History()
    cbs = [sizes, keras.callbacks.BackupAndRestore(str(tmp / backup)), budget, losses]
    cbs += [_KillAfter(kill)] if kill else []
    model.fit(x, y, batch_size=16, epochs=epochs, shuffle=False, callbacks=cbs, verbose=0)
    return sizes.sizes, losses.history["loss"]


def test_a_resumed_stage_keeps_the_re_planned_decay_and_the_seconds_already_spent(tmp_path):
    # killed after epoch 2: the re-plan (3 of 5 epochs fit the 35 s) and the 20 s spent are
    # on disk beside the backup; the restarted process's clock starts again at 0
    with pytest.raises(RuntimeError, match="killed after epoch 2"):
        _resumable_fit(tmp_path, "backup", kill=2)
    saved = json.loads((tmp_path / "time_budget.json").read_text())
    assert (saved["epochs_done"], saved["decay_ends_at_epoch"], saved["spent_s"]) == (2, 3, 20)
    shutil.copytree(tmp_path / "backup", tmp_path / "backup-copy")
    sizes, losses = _resumable_fit(tmp_path, "backup")
    assert len(losses) == 1  # epoch 3, the re-planned end, and no further
    assert not (tmp_path / "time_budget.json").exists()  # the fit ended: nothing to resume
    # without the saved state the resumed fit forgets both: a fresh 35 s budget and the
    # 5-epoch decay, still at 0.042 at step 12 where the re-planned one is at 0.002
    fresh, fresh_losses = _resumable_fit(tmp_path, "backup-copy", state=False)
    assert len(fresh_losses) == 3
    assert sizes[-1] < 0.1 * fresh[3], (sizes, fresh)
    # a state file left by a fit that ended at another epoch (here: a new fit, from epoch 0)
    # is not this fit's: it is ignored, and the fit gets the whole budget and plan
    (tmp_path / "time_budget.json").write_text(json.dumps(saved))
    _, new_losses = _resumable_fit(tmp_path, "backup-new")
    assert len(new_losses) == 3  # 10 s epochs in 35 s, re-planned to 3 after epoch 2


def test_the_epochs_that_fit_come_from_measured_batches_and_the_validation_pass():
    from graft.components.train import epochs_that_fit

    # chest_xray's auto run: advise planned 5 epochs of ~85 s in 8.2 min; an epoch of 163
    # batches took ~149 s (0.8 s a batch + ~19 s of validation): 3 fit
    assert epochs_that_fit(8.2, 0.8, 163, 19.0) == 3
    assert epochs_that_fit(8.2, 0.3, 163, 10.0) == 8  # faster batches: more
    assert epochs_that_fit(0.5, 0.8, 163, 19.0) == 1  # never none: the budget stops it


def test_a_saved_model_loads_in_a_process_that_imported_only_fitting(tmp_path):
    """load_model registers Graft's own layers itself: a process (a served-model scorer, a
    user's script) that imports nothing else of Graft still loads a saved model."""
    import subprocess
    import sys

    base = BaseConfig(name="mobilenet", weights=None, kwargs={"alpha": 0.25})
    model = gmodel.build_model(base, HeadConfig(), 3, 32)
    model.save(tmp_path / "model.keras")
    code = (
        "import sys; from graft.components.fitting import load_model; "
        "print(type(load_model(sys.argv[1]).get_layer('preprocess')).__name__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "model.keras")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "BackbonePreprocess"


def test_a_history_line_a_kill_cut_short_does_not_stop_the_resume(tmp_path):
    """history.jsonl is appended each epoch: a kill mid-write left half a line, and every
    resume of that stage then failed on it (the epoch it belonged to runs again)."""
    from graft.components.fitting import read_history

    (tmp_path / "history.jsonl").write_text(
        '{"epoch": 0, "loss": 1.0}\n{"epoch": 1, "loss": 0.8}\n{"epoch": 2, "lo'
    )
    assert [r["epoch"] for r in read_history(str(tmp_path))] == [0, 1]


@pytest.mark.parametrize("cosine", [True, False])
def test_the_fine_tune_budget_carries_over_a_resume_with_or_without_a_decay(tmp_path, cosine):
    """fine_tune.max_minutes: a resumed stage keeps the seconds spent. Without a cosine decay
    to re-plan, the budget kept no state, so a kill gave the resumed fit the whole budget again."""
    import tensorflow as tf

    from graft.components import data as gdata
    from graft.components.train import TimeBudget, _fine_tune_callbacks, _TuneRun
    from graft.core.config import AugmentConfig, FineTuneConfig, TrainConfig, TrainHeadConfig

    cfg = FineTuneConfig(max_minutes=5.0, cosine_decay=cosine)
    run = _TuneRun(
        str(tmp_path), str(tmp_path), str(tmp_path / "out"), str(tmp_path / "w"),
        tf.distribute.get_strategy(), TrainConfig(), cfg, AugmentConfig(), 32, None,
        TrainHeadConfig(), gdata.Geometry(),
    )  # fmt: skip
    cbs, _ = _fine_tune_callbacks(run, 0, [], steps=4)
    (budget,) = [c for c in cbs if isinstance(c, TimeBudget)]
    assert budget.state_path == str(tmp_path / "w" / "time_budget.json")
    assert (budget.planned is not None) == cosine  # only a decay is re-planned


def test_the_reported_val_accuracy_is_the_kept_epochs():
    """With early stopping the best val-loss epoch's weights are restored and reported; with
    patience 0 there is no restore: the last epoch is what was saved, and what is reported."""
    from graft.components.train import _best

    hist = [
        {"epoch": 0, "val_loss": 0.9, "val_accuracy": 0.5},
        {"epoch": 1, "val_loss": 0.4, "val_accuracy": 0.8},
        {"epoch": 2, "val_loss": 0.6, "val_accuracy": 0.7},
    ]
    assert _best(hist, patience=3) == (0.8, 0.4)
    assert _best(hist, patience=0) == (0.7, 0.6)


class _ScriptedValLoss(keras.callbacks.Callback):
    """Sets each epoch's val_loss from a script (placed before early stopping)."""

    def __init__(self, losses):
        super().__init__()
        self.losses = losses

    def on_epoch_end(self, epoch, logs=None):
        logs["val_loss"] = self.losses[epoch]


def _early_stopped_fit(tmp, kill=None):
    """8 epochs, patience 2, val losses best at epoch 3 (index 2): stops after epoch 5 and keeps
    epoch 3's weights. The stage's own callbacks (train.callbacks) in `tmp`; (epochs run,
    weights kept)."""
    from graft.components.train import callbacks

    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    cbs, _ = callbacks(str(tmp), "t", epochs=8, patience=2)
    scripted = _ScriptedValLoss([0.9, 0.8, 0.5, 0.6, 0.7, 0.4, 0.3, 0.2])
    cbs = [scripted, *cbs] + ([_KillAfter(kill)] if kill else [])
    h = model.fit(x, y, batch_size=8, epochs=8, shuffle=False, callbacks=cbs, verbose=0)
    return len(h.history["loss"]), model.get_weights()


def test_a_resumed_fit_stops_and_restores_as_the_uninterrupted_one(tmp_path):
    """Keras resets EarlyStopping at every fit's start: a fit killed after epoch 4 and resumed
    took epoch 5 as its new best, trained on to epoch 8 and shipped epoch 8's weights, where
    the uninterrupted fit stopped after epoch 5 with epoch 3's."""
    ran, kept = _early_stopped_fit(tmp_path / "whole")
    assert ran == 5
    with pytest.raises(RuntimeError, match="killed after epoch 4"):
        _early_stopped_fit(tmp_path / "killed", kill=4)
    resumed_ran, resumed_kept = _early_stopped_fit(tmp_path / "killed")
    assert resumed_ran == 1  # epoch 5 only: patience was already half spent
    for a, b in zip(kept, resumed_kept, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)  # epoch 3's weights, restored
    assert not (tmp_path / "killed" / "backup").exists()  # the fit ended: its state went too
