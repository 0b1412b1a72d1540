"""Per-stage learning rates in fine-tuning, and the LR range test that picks the rate.

Why: an earlier stage of a pretrained base holds more general features, so it should move
less than the top (discriminative rates, `fine_tune.layer_lr_decay`), and it should wait
until the new head and the top stage have settled (gradual unfreezing,
`fine_tune.unfreeze.gradual_epochs`). Both are one per-variable scale on the optimizer's
rate, set each epoch by a callback: a stage that has not joined yet has scale 0, so the
model is compiled once, and a resumed run gets the same scales from its epoch number.
(A waiting stage still computes gradients: gradual unfreezing saves no time here.)
"""

from __future__ import annotations

import math
import time
import warnings
from contextlib import nullcontext

import keras
import numpy as np

from graft.components import model as gmodel
from graft.components.fitting import make_optimizer, schedule
from graft.core.config import FineTuneConfig

__all__ = [
    "StageRates",
    "depths",
    "fine_tune_optimizer",
    "on_grid",
    "pick_rate",
    "planned_rates",
    "range_test",
    "scales",
    "schedule_text",
]


class _Layerwise:
    """Optimizer mixin: variable i is updated at learning_rate * lr_scales[i]."""

    def build(self, variables):
        if self.built:  # a LossScaleOptimizer builds its inner optimizer again
            return
        super().build(variables)
        self.lr_scales = self.add_variable((len(variables),), initializer="ones", name="lr_scales")
        self.scaled_paths = [v.path for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        i = self._get_variable_index(variable)
        return super().update_step(gradient, variable, learning_rate * self.lr_scales[i])


@keras.saving.register_keras_serializable(package="graft")
class LayerwiseAdam(_Layerwise, keras.optimizers.Adam):
    pass


@keras.saving.register_keras_serializable(package="graft")
class LayerwiseAdamW(_Layerwise, keras.optimizers.AdamW):
    pass


@keras.saving.register_keras_serializable(package="graft")
class LayerwiseSGD(_Layerwise, keras.optimizers.SGD):
    pass


@keras.saving.register_keras_serializable(package="graft")
class LayerwiseRMSprop(_Layerwise, keras.optimizers.RMSprop):
    pass


OPTIMIZERS = {
    "adam": LayerwiseAdam,
    "adamw": LayerwiseAdamW,
    "sgd": LayerwiseSGD,
    "rmsprop": LayerwiseRMSprop,
}


def fine_tune_optimizer(cfg: FineTuneConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """cfg's optimizer on its schedule; the layerwise class when cfg.staged.

    Args:
        cfg: the fine_tune config (optimizer, learning rate schedule, momentum, staged).
        steps_per_epoch: optimizer steps in one epoch.

    Returns:
        A new optimizer.
    """
    return make_optimizer(
        cfg.optimizer,
        schedule(cfg, steps_per_epoch),
        cfg.momentum,
        OPTIMIZERS if cfg.staged else None,
    )


def stage_of_layers(base: keras.Model) -> list[int]:
    """Stage number of each of the base's layers (0: the stem), a stage being a run of layers
    with one feature-map size; layers without a 4-d output belong to the stage before."""
    starts = set(gmodel.stage_starts(base))
    out, stage = [], -1
    for i in range(len(base.layers)):
        if i in starts:
            stage += 1
        out.append(max(stage, 0))
    return out


def depths(model: keras.Model) -> dict[str, int]:
    """Trainable base variable path -> stages below the base's last stage (0: the top stage;
    the head, absent here, also trains at the full rate). Call after unfreezing.

    Args:
        model: the full model, its base unfrozen as planned.

    Returns:
        Stage depth by variable path, for the base's trainable variables.
    """
    base = gmodel.base_of(model)
    stage = stage_of_layers(base)
    top = max(stage) if stage else 0
    out = {}
    for layer, s in zip(base.layers, stage, strict=True):
        for v in layer.trainable_weights:
            out[v.path] = top - s
    return out


def scales(depth: list[int], epoch: int, decay: float, gradual_epochs: int) -> np.ndarray:
    """Each variable's rate scale at `epoch`: decay**depth once its stage has joined, else 0.

    Args:
        depth: each variable's stage depth, in the optimizer's variable order.
        epoch: the epoch about to start (0-based).
        decay: the rate scale per stage of depth.
        gradual_epochs: epochs between one stage joining and the next.

    Returns:
        One float32 scale per variable.
    """
    d = np.asarray(depth, dtype=np.float32)
    joined = epoch >= d * gradual_epochs
    return np.where(joined, np.float32(decay) ** d, np.float32(0.0)).astype(np.float32)


def schedule_text(model: keras.Model, info: dict, decay: float, gradual_epochs: int) -> str:
    """The unfrozen stages and their rates, for the log: 'stage 28x28 x0.3 from epoch 2; ...'.

    Args:
        model: the full model, its base unfrozen as planned.
        info: the unfreeze plan (its `from_index`).
        decay: the rate scale per stage of depth.
        gradual_epochs: epochs between one stage joining and the next.

    Returns:
        One line of text.
    """
    base = gmodel.base_of(model)
    stage = stage_of_layers(base)
    top = max(stage) if stage else 0
    first = stage[min(info["from_index"], len(stage) - 1)] if stage else 0
    parts = []
    for s in range(top, first - 1, -1):
        layer = base.layers[max(stage.index(s), info["from_index"])]  # its first unfrozen layer
        d = top - s
        side = base.layers[stage.index(s)].output.shape[1]
        parts.append(
            f"{side}x{side} stage from '{layer.name}': lr x{decay**d:.3g}"
            + (f" from epoch {d * gradual_epochs + 1}" if gradual_epochs and d else "")
        )
    return "; ".join(parts)


class StageRates(keras.callbacks.Callback):
    """Sets the optimizer's per-variable scales at each epoch's start (gradual unfreezing)."""

    def __init__(self, depth_by_path: dict[str, int], decay: float, gradual_epochs: int):
        super().__init__()
        self.depth_by_path, self.decay, self.gradual = depth_by_path, decay, gradual_epochs

    def on_epoch_begin(self, epoch, logs=None):
        outer = self.model.optimizer
        if not outer.built:  # one device: Keras builds it at the first step, after this
            with self.model.distribute_strategy.scope():
                outer.build(self.model.trainable_variables)
        opt = getattr(outer, "inner_optimizer", outer)  # mixed precision wraps it
        missing = set(self.depth_by_path) - set(opt.scaled_paths)
        if missing:
            raise RuntimeError(f"per-stage rates: {len(missing)} base variables not trained")
        depth = [self.depth_by_path.get(p, 0) for p in opt.scaled_paths]
        opt.lr_scales.assign(scales(depth, epoch, self.decay, self.gradual))


class _BatchLosses(keras.callbacks.Callback):
    """Each batch's rate and own loss (the running mean Keras logs, reset before every batch).
    Stops once the loss has clearly diverged (DIVERGED past the baseline) or is not finite."""

    def __init__(self, base_n: int, window: int = 5):
        super().__init__()
        self.rates: list[float] = []
        self.losses: list[float] = []
        self.base_n, self.window = base_n, window
        self.stopped = False  # the loss blew up (or was not finite) before the last batch
        self.ends: list[float] = []  # when each batch ended (reading its loss waits for it)
        self.began = 0.0

    def on_train_begin(self, logs=None):
        self.began = time.perf_counter()

    def on_train_batch_begin(self, batch, logs=None):
        self.model.reset_metrics()
        # the rate this batch trains at (a skipped mixed-precision step does not advance it)
        self.rates.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(float((logs or {})["loss"]))
        self.ends.append(time.perf_counter())
        k = len(self.losses)
        if not math.isfinite(self.losses[-1]):
            self.model.stop_training = self.stopped = True
        elif k > self.base_n:
            base = np.median(self.losses[: self.base_n])
            if np.median(self.losses[-self.window :]) > STOP * base:
                self.model.stop_training = self.stopped = True


DIVERGED = 1.5  # a 5-batch median this many times the baseline: the loss diverges
STOP = 4.0  # ...this many times: no need to go on


def baseline_batches(rates: list[float], window: int = 5) -> int:
    """Batches in the first two decades of rates (at least a window): the baseline's."""
    return max(window, sum(r <= 100 * rates[0] for r in rates))


def pick_rate(rates: list[float], losses: list[float], window: int = 5) -> dict:
    """The LR range test's choice: a third of the rate where the loss diverges (Smith's rule:
    divergence marks the largest usable rate). Divergence: the first window of `window`
    batches whose median loss is 1.5x the baseline, the median over the first two decades
    of rates, which barely move the weights; the rate is read at the window's middle. After
    the head stage the curve is flat and noisy (per-batch losses +-30%) until it rises, so
    its minimum (fastai's 'a tenth of the minimum') or a running minimum lands anywhere: on
    flowers they picked 7e-7 and 9e-8. No divergence within the test: chosen is None.

    Args:
        rates: the learning rate of each batch, rising.
        losses: each batch's training loss.
        window: batches per median window.

    Returns:
        A dict: the `rates` and `losses` seen, `baseline_loss`, `diverged_rate` and `chosen`
        (None both when the loss never diverged).
    """
    n = len(losses)
    base_n = baseline_batches(rates[:n], window)
    baseline = float(np.median(losses[:base_n]))
    diverged = None
    for k in range(base_n, n):
        w = losses[max(0, k - window + 1) : k + 1]
        if not all(math.isfinite(v) for v in w) or np.median(w) > DIVERGED * baseline:
            diverged = max(0, k - window // 2)  # the window's middle
            break
    return {
        "rates": [float(r) for r in rates[:n]],
        "losses": [round(float(v), 5) for v in losses],
        "baseline_loss": round(baseline, 5),
        "diverged_rate": None if diverged is None else float(rates[diverged]),
        "chosen": None if diverged is None else float(rates[diverged]) / 3,
    }


def range_test(
    model: keras.Model,
    train_ds,
    *,
    optimizer: str,
    momentum: float,
    steps: int,
    low: float = 1e-7,
    high: float = 1e-1,
    depth_by_path: dict[str, int] | None = None,
    decay: float = 1.0,
    strategy=None,
    jit: bool = False,
    repeats: int = 1,
) -> dict:
    """Train `steps` batches at a rate rising exponentially from low to high, recording each
    batch's loss, then put the weights back (and the dropout seeds: model.variables); the
    caller compiles the model again for the real fit. With `repeats` > 1 the test runs that
    many times from the same weights and optimizer state on fresh batches and picks on the
    median of their losses at each planned rate (on_grid); a run that stopped counts as
    diverged from there on. One run's pick moves: the rate where the loss diverged ranged
    8.9e-5..7.6e-3 over 8 runs on chest_xray, the median of 3 runs a quarter as much in log
    terms (benchmarks/results/lr_find.json).

    Args:
        model: the model to test, compiled afterwards by the caller.
        train_ds: the training batches.
        optimizer: the optimizer's name.
        momentum: SGD's momentum.
        steps: batches to train, one rate each.
        low: the first rate.
        high: the last rate.
        depth_by_path: stage depths (from `depths`) for layerwise rates; None: one rate.
        decay: the rate scale per stage of depth.
        strategy: the tf.distribute strategy to compile under; None: the default.
        jit: compile with XLA.
        repeats: how many times to run the test; the pick reads the median curve.

    Returns:
        pick_rate's dict for the (median) losses seen; `runs`: each run's first rate,
        whether it stopped, and its losses (a loss that is not finite as None); and
        `batch_seconds`, a training batch's median time, and `trace_seconds`, the first
        batch's extra time (tracing the step).
    """
    weights = [v.numpy() for v in model.variables]
    rate = keras.optimizers.schedules.ExponentialDecay(
        low, decay_steps=1, decay_rate=_growth(steps, low, high)
    )
    with strategy.scope() if strategy is not None else nullcontext():
        gmodel.compile_for_fit(
            model, make_optimizer(optimizer, rate, momentum, OPTIMIZERS), metrics=False, jit=jit
        )
    planned = planned_rates(steps, low, high)
    fresh = [v.numpy() for v in model.optimizer.variables]  # step 0, no moments, loss scale
    runs, between, first = [], [], None
    for _ in range(max(1, repeats)):
        seen = _BatchLosses(baseline_batches(planned))
        cbs = [seen]
        if depth_by_path is not None:
            cbs.append(StageRates(depth_by_path, decay, 0))
        for v, w in zip(model.optimizer.variables, fresh, strict=True):
            v.assign(w)  # each run starts the rate's schedule again
        model.fit(train_ds, epochs=1, steps_per_epoch=steps, callbacks=cbs, verbose=0)
        for v, w in zip(model.variables, weights, strict=True):
            v.assign(w)
        runs.append((seen.rates, seen.losses, seen.stopped))
        between += np.diff(seen.ends).tolist()  # each batch after a run's first
        if first is None and seen.ends:  # the first run's first batch: it traced the step
            first = seen.ends[0] - seen.began
    if len(runs) == 1:
        found = pick_rate(runs[0][0], runs[0][1])
    else:
        curve = _median_curve([(on_grid(r, ls, planned), stopped) for r, ls, stopped in runs])
        kept = [k for k, v in enumerate(curve) if not math.isnan(v)]  # rates every run skipped
        found = pick_rate([planned[k] for k in kept], [curve[k] for k in kept])
    found["losses"] = [v if math.isfinite(v) else None for v in found["losses"]]
    # a training batch's seconds (the median over the runs' traced batches) and what tracing
    # the step cost once, for fine_tune's epochs: its own batch size, model and data
    batch_s = float(np.median(between)) if between else None
    found["batch_seconds"] = round(batch_s, 5) if batch_s else None
    found["trace_seconds"] = round(max(0.0, first - batch_s), 3) if batch_s and first else None
    found["runs"] = [
        {
            "first_rate": r[0] if r else None,
            "stopped": stopped,
            "losses": [round(v, 5) if math.isfinite(v) else None for v in ls],
        }
        for r, ls, stopped in runs
    ]
    return found


def planned_rates(steps: int, low: float = 1e-7, high: float = 1e-1) -> list[float]:
    """The range test's rates, one per batch, rising exponentially from low to high.

    Args:
        steps: batches of the test.
        low: the first rate.
        high: the last rate.

    Returns:
        The `steps` planned rates.
    """
    growth = _growth(steps, low, high)
    return [low * growth**k for k in range(steps)]


def _growth(steps: int, low: float, high: float) -> float:
    """The range test's rate factor per batch: low to high over `steps` batches."""
    return (high / low) ** (1 / max(1, steps - 1))


def on_grid(rates: list[float], losses: list[float], planned: list[float]) -> list:
    """A run's losses by the planned rate each batch trained at, so that runs pool by rate,
    not by batch: under mixed precision a skipped step (the loss scale overflowed) does not
    advance the rate, and the next batch trains at it again (its loss, the later, counts).

    Args:
        rates: the rate each batch trained at, as the run recorded it.
        losses: each batch's loss.
        planned: the test's rising rates, one per planned batch.

    Returns:
        A loss per planned rate up to the highest one the run reached; None for a planned
        rate no batch trained at.
    """
    grid = np.log(np.asarray(planned))
    at = [int(np.abs(grid - math.log(r)).argmin()) for r in rates]
    out: list = [None] * (max(at) + 1 if at else 0)
    for k, v in zip(at, losses, strict=False):
        out[k] = v
    return out


def _median_curve(runs: list[tuple[list, bool]]) -> list[float]:
    """The per-rate median of several runs' losses (on_grid's). A loss that is not finite,
    and every rate after a run stopped (its loss blew up), count as infinite: diverged; a
    run that ended without stopping, or a rate it skipped (None), leaves it to the others."""
    n = max(len(losses) for losses, _ in runs)
    rows = []
    for losses, stopped in runs:
        row = np.full(n, np.inf if stopped else np.nan)
        row[: len(losses)] = [
            np.nan if v is None else v if math.isfinite(v) else np.inf for v in losses
        ]
        rows.append(row)
    with warnings.catch_warnings():  # a rate no run trained at: NaN, which the caller drops
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(np.array(rows), axis=0).tolist()
