"""The advise step: where the data sits in the seed's size x similarity matrix, and the plan.

`measure` gathers the evidence a practitioner would look at before training: images per
class, class balance, image resolution against the input size, and how well frozen features
from several depths of the base separate the classes (k-fold cross-validated linear probes
on the training split, each with its 95% interval). If an earlier block probes about as well
as the last one, the data is far from the base's domain. `plan` (pure, unit-tested) turns
the evidence into config overrides, each with its reason; the steps after advise run with
them. Then, at the plan's input size and layer, the probe sample is probed in each input
geometry (data.resize: squash, crop, pad) on the same folds, and `plan_geometry` leaves the
base's own mode only for one whose paired gain over it is beyond the noise. All features go
through the feature store, so the head stage reuses them.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from statistics import median
from typing import Any

import numpy as np

from graft.core.log import log

__all__ = [
    "BASE_RULE",
    "Probe",
    "Evidence",
    "Decision",
    "Plan",
    "AdviceResult",
    "WeightsUnavailable",
    "advise",
    "read_advice",
    "advice_table",
    "advice_markdown",
    "plan",
    "seed_plan",
    "plan_geometry",
    "plan_flip",
    "plan_views",
    "measure_views",
    "plan_balance",
    "balance_predictions",
    "IMBALANCE_RATIO",
    "plan_base",
    "plan_refit",
    "refit_hits",
    "choose_base",
    "base_geometry",
    "probe",
    "probe_predictions",
    "flip_hits",
    "taps",
    "MULTI",
    "MULTI_RULE",
]

SEED_UNFREEZE_INDEX = 149  # the seed: SGD(1e-4, momentum 0.9) from MobileNetV2's layer 149
MAX_FINE_TUNE_EPOCHS = 8
LR_FIND_STEPS = 60  # batches of the LR range test before fine-tuning
LR_FIND_REPEATS = 3  # its runs: the pick reads their median curve (one run's pick moves)
LAYER_LR_DECAY = 0.4  # an earlier stage's rate against the next's (ULMFiT: 1 / 2.6)
FINE_TUNE_LR = 1e-4  # the LR range test searches 10x either side of it
MULTI = "multi"  # a multi-depth probe's depth: every tap's pooled features, concatenated
MULTI_RULE = (
    "the head reads the single layer chosen above, unless the concatenation of every tap's "
    "standardised pooled features probes better beyond the noise (the one-sided 90% bound of "
    "its paired gain above 0, the geometry rule's bar)"
)


@dataclass
class Probe:
    """k-fold linear probe on pooled features of one layer at one input size."""

    layer: str
    depth: str  # "final", or the feature map size of an earlier tap, e.g. "14x14"
    size: int
    dim: int
    accuracy: float
    low: float
    high: float
    n: int
    correct: list[bool] = field(default_factory=list, repr=False)  # out-of-fold, per image


@dataclass
class Evidence:
    """What advise measured on the data and the base, which the plan's decisions read: the
    data's size and balance, the layer probes, the base's speed and the optional probes."""

    base: str
    image_size: int
    n_train: int
    n_val: int
    n_classes: int
    per_class_min: int
    per_class_max: int
    median_side: int
    probes: list[Probe]  # at image_size, final first; then any at a smaller size
    stage_starts: list[str]  # first layer of each feature-map size of the base, last stage last
    stage_fraction: list[float]  # share of the base's layers from each stage start to the top
    base_layers: list[str]
    images_per_s: float  # forward pass at image_size, the fastest measured here
    # the fastest forward pass measured per probed size (px -> images/s): a busy moment
    # only slows a pass, so the fastest is the base's own speed here
    speeds: dict[int, float] = field(default_factory=dict)
    # advise's own time out of the run's budget (train.budget_minutes), the training stages
    # get the rest: seconds until the plan, and the base passes the geometry and flip probes
    # make after it (over their sample, at the planned input size: see _advise_seconds)
    spent_s: float = 0.0
    later_probe_images: int = 0
    # per layer: k-fold paired gain of a 256-unit hidden layer over linear, at the chosen size
    hidden_head: dict[str, dict] | None = None
    seconds: float = 0.0
    # the geometry probes (measure_geometry): per data.resize mode, accuracy and paired gain
    geometry: dict | None = None
    # the test-time flip probe (measure_flip): plain vs flip-averaged k-fold hits
    flip: dict | None = None
    # the class-balance probe (measure_balance), over IMBALANCE_RATIO only: k-fold macro-F1
    # without and with balanced class weights
    balance: dict | None = None
    # the backbone probes (measure_bases): per base, accuracy, paired gains and forward cost
    bases: dict | None = None
    # the augmented-views probe (measure_views): per K views, paired gain and seconds
    views: dict | None = None
    # the refit probe (measure_refit): k-fold learning curve at the refit's share of images
    refit: dict | None = None
    # label_issues.check's document (label_issues.json, not advice.json)
    label_check: dict | None = field(default=None, repr=False)

    @property
    def imbalance(self) -> float:
        return self.per_class_max / max(1, self.per_class_min)


@dataclass
class Decision:
    """One line of the plan: what was decided, the choice, and the evidence for it."""

    what: str
    choice: Any
    reason: str


@dataclass
class Plan:
    """A recipe: the seed matrix's cell, the config overrides it sets, and its decisions."""

    recipe: str
    cell: dict[str, str]
    overrides: dict[str, Any]
    decisions: list[Decision]


# ----------------------------------------------------------------------------- plan


def _gap(a: Probe, b: Probe) -> dict:
    """Paired out-of-fold accuracy a - b on the same images, with its 95% interval."""
    from graft.components.stats import paired_difference

    if len(a.correct) == len(b.correct) and a.correct:
        return paired_difference(np.array(a.correct), np.array(b.correct))
    d = a.accuracy - b.accuracy  # different images: independent intervals
    half = math.hypot(a.high - a.low, b.high - b.low) / 2
    return {"difference": d, "low": d - half, "high": d + half, "n": min(a.n, b.n)}


def _at(ev: Evidence, layer: str) -> Probe:
    return next(p for p in ev.probes if p.layer == layer and p.size == ev.image_size)


def _fmt(p: Probe) -> str:
    return f"{p.accuracy:.3f} [{p.low:.3f}, {p.high:.3f}]"


def _speed_at(ev: Evidence, size: int) -> float:
    """Images per second of the base's forward pass at `size`: measured there, else the
    input size's scaled by the pixel count."""
    if ev.speeds.get(size):
        return ev.speeds[size]
    return max(ev.images_per_s, 1e-6) / (size / ev.image_size) ** 2


def _advise_seconds(ev: Evidence, size: int) -> float:
    """advise's share of the budget when the input is `size` px: its seconds until the plan,
    and its passes after it at that size's speed."""
    return ev.spent_s + ev.later_probe_images / _speed_at(ev, size)


def _fine_tune_budget(ev: Evidence, size: int, similar: bool, cut: str | None, minutes: float):
    """Fine-tuning epochs that fit the budget, with the estimate behind them: (epochs, epoch
    seconds, seconds left after the head, range-test seconds, stages, first layer, share of
    the base's layers trained). Similar data trains the top stage, dissimilar the top two."""
    # stages of the (cut) base: those that start before the layer the head reads
    starts = list(zip(ev.stage_starts, ev.stage_fraction, strict=True))
    if cut and ev.base_layers:
        at = ev.base_layers.index(cut)
        starts = [(n, f) for n, f in starts if ev.base_layers.index(n) < at]
        kept = 1 - at / len(ev.base_layers)  # the share of layers cut away
        starts = [(n, f - kept) for n, f in starts]
    stages = 1 if similar else max(1, min(2, len(starts)))
    start, frac = starts[-stages] if starts else (None, 1.0)
    # epoch time: a forward pass over train + val, plus about one more for the trained
    # part's backward pass (measured on 2 cores, MobileNetV2 from block_6 on flowers: 46 s
    # an epoch at 128 px, this model 47 s; 129-162 s at 224 px, this model 148 s)
    speed = _speed_at(ev, size)
    epoch_s = (ev.n_train * (1 + frac) + ev.n_val) / speed
    head_s = 30 + (ev.n_train + ev.n_val) / speed
    left = minutes * 60 - _advise_seconds(ev, size) - head_s
    # the LR range test: LR_FIND_REPEATS runs of LR_FIND_STEPS batches (of 32, fine_tune's
    # default), each at most an epoch
    find_s = LR_FIND_REPEATS * epoch_s * min(1.0, LR_FIND_STEPS * 32 / max(1, ev.n_train))
    epochs = max(0, min(MAX_FINE_TUNE_EPOCHS, int((left - find_s) // max(epoch_s, 1e-6))))
    return epochs, epoch_s, left, find_s, stages, start, frac


def _smaller_size(ev: Evidence, at: Probe) -> int | None:
    """The smaller probed input size for `at`'s layer when it probes as well (the larger's
    paired gain inside the noise or below it), else None."""
    smaller = [p for p in ev.probes if p.size < ev.image_size and p.layer == at.layer]
    return smaller[0].size if smaller and _gap(at, smaller[0])["low"] <= 0 else None


def _decide_data_size(ev: Evidence, small_data: int) -> tuple[bool, Decision]:
    """Small or large: below advise.small_data, fine-tuning gains cannot be told from noise."""
    small = ev.n_train < small_data
    return small, Decision(
        "data size",
        "small" if small else "large",
        f"{ev.n_train} training images ({ev.n_train // max(1, ev.n_classes)} per class on "
        f"average, fewest {ev.per_class_min}); small below advise.small_data={small_data}",
    )


def _decide_similarity(final: Probe, best_early: Probe | None) -> tuple[bool, Decision]:
    """Similar when the last layer probes better than any earlier block beyond the noise."""
    if best_early is None:
        similar, why = True, "no earlier tap to compare (base too shallow); assumed similar"
    else:
        g = _gap(final, best_early)
        similar = g["low"] > 0
        why = (
            f"final-layer probe {_fmt(final)} vs {best_early.depth} ({best_early.layer}) "
            f"{_fmt(best_early)}: paired gain {g['difference']:+.3f} "
            f"[{g['low']:+.3f}, {g['high']:+.3f}]; "
            + (
                "the last block is clearly better: close to the base's data"
                if similar
                else "an earlier block probes as well or better: far from the base's data"
            )
        )
    return similar, Decision("similarity", "similar" if similar else "dissimilar", why)


def _decide_features(
    final: Probe, best_early: Probe | None, similar: bool, fits: bool
) -> tuple[Probe, Decision]:
    """An earlier block where it probes better beyond the noise, unless fine-tuning the whole
    base fits; small and dissimilar data (the matrix: "classifier on earlier layers'
    features") keeps the last layer only when the earlier one is inside the noise."""
    chosen = final
    why = "the base's last layer"
    if best_early is not None:
        g = _gap(best_early, final)
        if g["low"] > 0 and fits:
            why = (
                f"the base's last layer, whole: {best_early.depth} features ({best_early.layer}) "
                f"probe better by {g['difference']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}], "
                "but with this much data fine-tuning retrains the top stages, so the base is "
                "not cut (the seed's matrix: large data fine-tunes most of the base, small data "
                "reads earlier features)"
            )
        elif g["low"] > 0:
            chosen = best_early
            why = (
                f"{best_early.depth} features ({best_early.layer}, {best_early.dim}-d) probe "
                f"better than the last layer's by {g['difference']:+.3f} [{g['low']:+.3f}, "
                f"{g['high']:+.3f}]: the base is cut there, a smaller and faster model"
            )
        elif not similar:
            why = (
                f"the base's last layer: {best_early.depth} features ({best_early.layer}) probe "
                f"{_fmt(best_early)} vs {_fmt(final)}, a difference inside the noise, so the "
                "simpler choice (no cut)"
            )
    return chosen, Decision("features", chosen.layer, why)


def _decide_input_size(ev: Evidence, chosen: Probe) -> tuple[Probe, Decision]:
    """A smaller input when the photos are small and it probes as well: the chosen layer's
    probe at the size picked, and the decision."""
    smaller = [p for p in ev.probes if p.size < ev.image_size and p.layer == chosen.layer]
    if not smaller:
        return chosen, Decision(
            "input size",
            ev.image_size,
            f"photos are {ev.median_side} px (median side), not much below {ev.image_size} px",
        )
    s = smaller[0]
    g = _gap(chosen, s)
    if g["low"] > 0:
        return chosen, Decision(
            "input size",
            ev.image_size,
            f"{ev.image_size} px probes better than {s.size} px by "
            f"{g['difference']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}]: it pays",
        )
    return s, Decision(
        "input size",
        s.size,
        f"photos are {ev.median_side} px (median side); {s.size} px probes "
        f"{_fmt(s)} vs {_fmt(_at(ev, s.layer))} at "
        f"{ev.image_size} px (gain of the larger {g['difference']:+.3f} "
        f"[{g['low']:+.3f}, {g['high']:+.3f}]): "
        + ("the smaller probes better" if g["high"] < 0 else "not beyond the noise")
        + f", so the {(ev.image_size / s.size) ** 2:.1f}x cheaper input",
    )


def _decide_multi_depth(ev: Evidence, chosen: Probe) -> tuple[Probe | None, Decision]:
    """A multi-depth head (head.taps) when the concatenated taps probe better than the layer
    chosen, at the size chosen, beyond the noise (MULTI_RULE); else None."""
    from graft.components.stats import paired_difference

    multi = next((p for p in ev.probes if p.depth == MULTI and p.size == chosen.size), None)
    if multi is None:
        return None, Decision("multi-depth head", "no", "no earlier tap to read (base too shallow)")
    g = _gap(multi, chosen)
    low90 = g["low"]
    if len(multi.correct) == len(chosen.correct) and multi.correct:
        low90 = paired_difference(multi.correct, chosen.correct, level=0.80)["low"]
    taps = multi.layer.split("+")
    evidence = (
        f"the {len(taps)} taps concatenated ({', '.join(taps)}; {multi.dim}-d) probe "
        f"{_fmt(multi)} vs {_fmt(chosen)} for {chosen.layer}: paired gain "
        f"{g['difference']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}], one-sided 90% bound "
        f"{low90:+.3f}"
    )
    if low90 > 0:
        return multi, Decision(
            "multi-depth head", f"yes: {', '.join(taps)}", f"{evidence}: above 0, it pays"
        )
    return None, Decision("multi-depth head", "no", f"{evidence}: not beyond the noise")


def _fine_tune_planned(ev, cell, size, whole_size, cut_at, budget_minutes, small_data) -> bool:
    """Whether the fine-tune decision, on the layer chosen without taps, fine-tunes."""
    tuning, _ = _decide_fine_tune(ev, cell, size, whole_size, cut_at, budget_minutes, small_data)
    return bool(tuning.get("fine_tune.enabled"))


def _taps_not_with_fine_tuning(won: Decision) -> Decision:
    """The taps won on frozen features, but fine-tuning will change those features: what the
    probe measured is not what ships. (The bench does not show a loss either way: flowers kept
    its head over fine-tuning with taps, 0.704, and without, 0.698; docs/recipes.md.)"""
    return Decision(
        "multi-depth head",
        "no",
        f"{won.reason.removesuffix(': above 0, it pays')}: above 0 on frozen features, but "
        "fine-tuning is planned and changes them, so the head reads one layer",
    )


def _decide_head(ev: Evidence, layer: str, normalize: bool) -> tuple[dict, Decision]:
    """A hidden layer only when it beats linear beyond the noise (the k-fold probe says)."""
    norm = " + standardised features" if normalize else ""
    hh = (ev.hidden_head or {}).get(layer)
    if hh and hh["low"] > 0:
        return {"head.fc_size": 256, "head.dropout": 0.2}, Decision(
            "head",
            f"Dense(256, relu) + dropout 0.2{norm}",
            f"k-fold: a hidden layer gains {hh['difference']:+.3f} "
            f"[{hh['low']:+.3f}, {hh['high']:+.3f}] over linear",
        )
    why = (
        f"k-fold: a 256-unit hidden layer gains {hh['difference']:+.3f} "
        f"[{hh['low']:+.3f}, {hh['high']:+.3f}], not beyond the noise: the simpler head"
        if hh
        else "linear (no hidden-layer probe)"
    )
    return {"head.fc_size": 0, "head.dropout": 0.2}, Decision(
        "head", f"linear + dropout 0.2{norm}", why
    )


def _no_fine_tune_for_small_data(ev: Evidence, similar: bool, cut: bool) -> Decision:
    """Small data: the classifier only (on earlier features where the base was cut)."""
    why = (
        "small and similar: the classifier only (the seed's matrix)"
        if similar
        else "small and dissimilar: the classifier "
        + ("on earlier features (the seed's matrix)" if cut else "only")
    )
    return Decision(
        "fine-tune",
        "no",
        f"{why}; with {ev.n_train} training and {ev.n_val} val images a fine-tuning "
        "gain could not be told from noise on so few images, and fine-tuning this little "
        "data mostly fits noise",
    )


def _fine_tune_settings(
    epochs: int, left: float, find_s: float, epoch_s: float, stages: int, start: str | None
) -> dict[str, Any]:
    """fine_tune.* for the stages chosen: the lower stage joins after an epoch, at a lower
    rate, once the top has adapted."""
    gradual = 1 if stages > 1 and epochs >= 4 else 0
    return {
        "fine_tune.enabled": True,
        "fine_tune.unfreeze.mode": "from_layer" if start else "all",
        "fine_tune.unfreeze.from_layer": start,
        "fine_tune.optimizer": "adam",
        "fine_tune.learning_rate": FINE_TUNE_LR,
        "fine_tune.lr_find": True,
        "fine_tune.lr_find_steps": LR_FIND_STEPS,
        "fine_tune.lr_find_repeats": LR_FIND_REPEATS,
        "fine_tune.layer_lr_decay": LAYER_LR_DECAY if stages > 1 else 1.0,
        "fine_tune.unfreeze.gradual_epochs": gradual,
        "fine_tune.cosine_decay": True,
        "fine_tune.warmup_epochs": 0.0,
        "fine_tune.epochs": epochs,
        # the whole schedule runs, then the best val-loss epoch is kept: patience 2 stopped
        # flowers after 5 of 8 epochs at a high rate (best val at epoch 3, 0.723 where full runs
        # reached 0.746-0.763), chest_xray after 4
        "fine_tune.patience": epochs,
        "fine_tune.augment": True,
        "fine_tune.guard": True,
        # not "better" (the higher val score): tried on 2026-12-07, it shipped a chest_xray
        # fine-tuning at val +0.006 that scored below its head on test, paired -0.009
        # [-0.022, +0.004] (one run; docs/recipes.md)
        "fine_tune.guard_rule": "beyond_noise",
        "fine_tune.max_minutes": round(max(left - find_s, epoch_s * 2) / 60, 2),
    }


def _fine_tune_reason(
    cell: dict[str, str],
    stages: int,
    gradual: int,
    epochs: int,
    epoch_s: float,
    minutes: float,
    spent_s: float = 0.0,
) -> str:
    """Why these stages, rates and epochs, in the seed matrix's words."""
    what = "the top stage" if stages == 1 else f"the top {stages} stages"
    lr = FINE_TUNE_LR
    return (
        f"{cell['size']} and {cell['similarity']}: {what} (the seed's matrix: "
        + (
            "fine-tune the top blocks"
            if cell["similarity"] == "similar"
            else "retrain more of the base"
        )
        + "), Adam with cosine decay at the rate an LR range test picks "
        f"(the median of {LR_FIND_REPEATS} runs of {LR_FIND_STEPS} batches; "
        f"{lr / 10:g}..{lr * 10:g}, else {lr:g})"
        + (
            f"; the lower stage at {LAYER_LR_DECAY:g}x the top's rate (earlier "
            "features are more general: discriminative rates, as in ULMFiT)"
            if stages > 1
            else ""
        )
        + (
            f", joining after {gradual} epoch (gradual unfreezing: the top "
            "stage adapts to the head first)"
            if gradual
            else ""
        )
        + f"; {epochs} epoch(s) of ~{epoch_s:.0f}s fit the {_budget_words(minutes, spent_s)}, "
        "all run, the best val-loss epoch kept; that model is kept only if it beats the "
        "head-only model on val beyond the noise"
    )


def _budget_words(minutes: float, spent_s: float) -> str:
    """The budget, and what advise took of it."""
    took = f", of which advise's probes take ~{spent_s / 60:.1f} min" if spent_s else ""
    return f"{minutes:g}-minute budget (train.budget_minutes{took})"


def _decide_augmentation(ev: Evidence, small_data: int) -> tuple[dict, Decision]:
    """Stronger augmentation below 3x advise.small_data: more variety per image."""
    strong = ev.n_train < 3 * small_data
    aug = (
        {"augment.rotation": 0.1, "augment.zoom": 0.2, "augment.contrast": 0.2}
        if strong
        else {"augment.rotation": 0.05, "augment.zoom": 0.1, "augment.contrast": 0.1}
    )
    return {**aug, "augment.translation": 0.1}, Decision(
        "augmentation",
        "stronger" if strong else "default",
        f"{ev.n_train} training images: "
        + ("more variety per image" if strong else "enough data for the defaults"),
    )


def _decide_fine_tune(
    ev: Evidence,
    cell: dict[str, str],
    size: int,
    whole_size: int,
    cut_at: str | None,
    budget_minutes: float,
    small_data: int,
) -> tuple[dict[str, Any], list[Decision]]:
    """Large data: how much of the base to fine-tune, from the cell and the time budget (and
    its augmentation); none when fewer than 2 epochs fit."""
    similar = cell["similarity"] == "similar"
    epochs, epoch_s, left, find_s, stages, start, frac = _fine_tune_budget(
        ev, size, similar, cut_at, budget_minutes
    )
    at = size
    if cut_at:  # cut because the whole base's fine-tuning did not fit
        at = whole_size
        epochs, epoch_s = _fine_tune_budget(ev, whole_size, similar, None, budget_minutes)[:2]
    if epochs < 2:
        return {"fine_tune.enabled": False}, [
            Decision(
                "fine-tune",
                "no",
                f"the {_budget_words(budget_minutes, _advise_seconds(ev, at))} "
                f"fits {epochs} "
                f"epoch(s) of ~{epoch_s:.0f}s of the whole base: too few to pay"
                + ("; the classifier reads the earlier features instead" if cut_at else ""),
            )
        ]
    settings = _fine_tune_settings(epochs, left, find_s, epoch_s, stages, start)
    gradual = settings["fine_tune.unfreeze.gradual_epochs"]
    decision = Decision(
        "fine-tune",
        f"from {start} ({frac:.0%} of the base's layers)",
        _fine_tune_reason(
            cell, stages, gradual, epochs, epoch_s, budget_minutes, _advise_seconds(ev, size)
        ),
    )
    aug, aug_decision = _decide_augmentation(ev, small_data)
    return {**settings, **aug}, [decision, aug_decision]


# the head's training, the same in every plan
_TRAIN_HEAD = {
    "train_head.epochs": 40,
    "train_head.patience": 5,
    "train_head.optimizer": "adam",
    "train_head.learning_rate": 1e-3,
    "train_head.augment": False,
    "train_head.feature_cache": "on",
}


def plan(ev: Evidence, *, budget_minutes: float, small_data: int) -> Plan:
    """The seed's matrix, applied to measured evidence: one function per decision, each given
    what the earlier ones chose. Pure: no TensorFlow, no files.

    Args:
        ev: the measured evidence.
        budget_minutes: the run's time budget, advise's probes and training (train.budget_minutes).
        small_data: below this many training images, the data counts as small.

    Returns:
        The auto Plan: its cell, the config overrides and one Decision per choice.
    """
    at_size = [p for p in ev.probes if p.size == ev.image_size and p.depth != MULTI]
    final, earlier = at_size[0], at_size[1:]
    best_early = max(earlier, key=lambda p: p.accuracy) if earlier else None
    small, size_decision = _decide_data_size(ev, small_data)
    similar, similarity_decision = _decide_similarity(final, best_early)
    cell = {"size": size_decision.choice, "similarity": similarity_decision.choice}
    d = [size_decision, similarity_decision]
    # fine-tuning the whole base, at the input size its last layer would get
    whole_size = _smaller_size(ev, final) or ev.image_size
    fits = not small and _fine_tune_budget(ev, whole_size, similar, None, budget_minutes)[0] >= 2
    chosen, features_decision = _decide_features(final, best_early, similar, fits)
    cut_at = None if chosen is final else chosen.layer
    chosen, input_decision = _decide_input_size(ev, chosen)
    multi, multi_decision = _decide_multi_depth(ev, chosen)
    if (
        multi is not None
        and not small
        and _fine_tune_planned(
            ev, cell, input_decision.choice, whole_size, cut_at, budget_minutes, small_data
        )
    ):
        multi, multi_decision = None, _taps_not_with_fine_tuning(multi_decision)
    if multi is not None:  # its taps include the base's output: the base stays whole
        cut_at, chosen = None, multi
    # an inner layer's pooled channels differ in scale by orders of magnitude; the probes
    # standardise them, so the head does too (on the last layer the plain head matches them)
    o: dict[str, Any] = {
        "base.cut_at": cut_at,
        "data.image_size": input_decision.choice,
        "head.normalize": cut_at is not None or multi is not None,
        "head.taps": multi.layer.split("+")[1:] if multi is not None else [],
    }
    head, head_decision = _decide_head(ev, chosen.layer, o["head.normalize"])
    o.update({**head, **_TRAIN_HEAD})
    d += [features_decision, input_decision, multi_decision, head_decision]
    if small:
        o["fine_tune.enabled"] = False
        d.append(_no_fine_tune_for_small_data(ev, similar, cut_at is not None))
    else:
        tuning, decisions = _decide_fine_tune(
            ev, cell, input_decision.choice, whole_size, cut_at, budget_minutes, small_data
        )
        o.update(tuning)
        d += decisions
    return Plan("auto", cell, o, d)


def seed_plan(base_name: str, base_layers: list[str]) -> Plan:
    """The seed's recipe exactly: GAP -> Dense(256, relu) -> softmax, then SGD from layer 149.

    Args:
        base_name: the configured base, noted when it is not the seed's mobilenet_v2.
        base_layers: the base's layer names, to name the layer fine-tuning starts from.

    Returns:
        The seed Plan, the baseline other recipes are compared against.
    """
    i = min(SEED_UNFREEZE_INDEX, len(base_layers) - 1)
    notes = [
        Decision("recipe", "seed", "the seed's fixed recipe, the baseline to compare against"),
        Decision("head", "Dense(256, relu)", "GAP -> Dense(256, relu) -> softmax"),
        Decision(
            "fine-tune",
            f"from layer {i} ({base_layers[i]})",
            "SGD(1e-4, momentum 0.9), no guard",
        ),
    ]
    if base_name != "mobilenet_v2":
        notes.append(
            Decision("base", base_name, "the seed's base is mobilenet_v2; layer 149 of this one")
        )
    o = {
        "base.cut_at": None,
        "head.fc_size": 256,
        "head.dropout": 0.0,
        "head.normalize": False,
        "head.taps": [],
        "train_head.augment": False,
        "fine_tune.enabled": True,
        "fine_tune.unfreeze.mode": "from_layer",
        "fine_tune.unfreeze.from_layer": base_layers[i],
        "fine_tune.optimizer": "sgd",
        "fine_tune.learning_rate": 1e-4,
        "fine_tune.momentum": 0.9,
        "fine_tune.cosine_decay": False,
        "fine_tune.warmup_epochs": 0.0,
        "fine_tune.guard": False,
    }
    return Plan("seed", {}, o, notes)


GEOMETRY_RULE = (
    "the base's own input transform (ImageNet weights: crop, the shorter side to size / "
    "crop_fraction and the centre square, as the base was trained and evaluated; the demo base "
    "or random init: squash) unless another mode probes better with 90% confidence (the "
    "one-sided 90% lower bound of its paired gain, `low90`, above 0); if several do, the larger "
    "gain"
)


def base_geometry(base_cfg) -> str:
    """The data.resize the base's weights were made with: crop for ImageNet weights (every
    keras.applications file, 'imagenet' or a file of them), squash for the demo base (pretrained
    on squashed images) and for random init (no transform to match).

    Args:
        base_cfg: the `base` section.

    Returns:
        "crop" or "squash".
    """
    from graft.core.paths import demo_weights

    w = base_cfg.weights
    demo_name = os.path.basename(demo_weights()).split(".")[0]  # and its shallow sibling
    if w in (None, "demo") or (isinstance(w, str) and os.path.basename(w).startswith(demo_name)):
        return "squash"
    return "crop"


def plan_geometry(p: Plan, geo: dict) -> None:
    """data.resize from the geometry probes: the base's own mode (`geo["default"]`) unless
    another wins beyond the noise. Pure; adds the override and a decision line with the
    evidence.

    Args:
        p: the plan, changed in place.
        geo: measure_geometry's evidence: per mode, accuracy and paired gain; the "default".
    """
    default = geo.get("default", "squash")
    wins = {
        m: r["gain"]
        for m, r in geo["modes"].items()
        if m != default and r.get("gain") and _low90(r["gain"]) > 0
    }
    choice = max(wins, key=lambda m: wins[m]["difference"]) if wins else default
    parts = [f"{default} {geo['modes'][default]['accuracy']:.3f}"]
    for m, r in geo["modes"].items():
        if m != default:
            g = r["gain"]
            parts.append(
                f"{m} {r['accuracy']:.3f} (paired {g['difference']:+.3f} "
                f"[{g['low']:+.3f}, {g['high']:+.3f}]"
                + (f", 90% bound {g['low90']:+.3f})" if "low90" in g else ")")
            )
    verdict = (
        f"{choice} wins beyond the noise (its 90% bound above 0)"
        if wins
        else f"no mode beats {default} beyond the noise, so the base's own ({default})"
    )
    p.overrides["data.resize"] = choice
    p.decisions.append(
        Decision(
            "geometry",
            choice,
            f"{geo['folds']}-fold probes of {geo['layer']} at {geo['size']} px on the same "
            f"{geo['n']} training images: " + ", ".join(parts) + f": {verdict}",
        )
    )


def _low90(gain: dict) -> float:
    """The one-sided 90% lower bound of a paired gain (advice written before it: the 95% low)."""
    return gain.get("low90", gain["low"])


# ------------------------------------------------------------------------- measure


def probe(
    x: np.ndarray,
    y: np.ndarray,
    folds: int,
    hidden: int = 0,
    seed: int = 0,
    groups: np.ndarray | None = None,
    class_weight: str | None = None,
):
    """Out-of-fold hits of a linear (or one-hidden-layer) classifier: k-fold CV.

    With `groups` (data.group_by: a patient's images), a group's images share one fold: else
    a probe scores images of patients it trained on, and favours the features that recognise
    the patient over those that recognise the class.

    Args:
        x: pooled features, one row per image.
        y: the class indices.
        folds: k, lowered to the smallest class's count (at least 2).
        hidden: units of one hidden layer; 0 for a linear probe.
        seed: seeds the folds and the classifier.
        groups: each image's group (data.group_by), or None.
        class_weight: "balanced" weighs each class n / (C x n_c), as the head's training
            does (linear probe only); None: each image alike.

    Returns:
        One bool per image: whether the fold that held it out classified it right.
    """
    return probe_predictions(x, y, folds, hidden, seed, groups, class_weight) == y


def probe_predictions(
    x: np.ndarray,
    y: np.ndarray,
    folds: int,
    hidden: int = 0,
    seed: int = 0,
    groups: np.ndarray | None = None,
    class_weight: str | None = None,
) -> np.ndarray:
    """`probe`'s out-of-fold predicted class per image: what macro-F1 needs.

    Args:
        x: pooled features, one row per image.
        y: the class indices.
        folds: k, lowered to the smallest class's count (at least 2).
        hidden: units of one hidden layer; 0 for a linear probe.
        seed: seeds the folds and the classifier.
        groups: each image's group (data.group_by), or None.
        class_weight: "balanced" (linear probe only) or None, as in `probe`.

    Returns:
        The class index the fold that held each image out predicted for it.
    """
    if hidden and class_weight:
        raise ValueError("class_weight applies to the linear probe only (hidden=0)")
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    k = max(2, min(folds, int(np.bincount(y).min())))
    clf = (
        MLPClassifier((hidden,), alpha=1e-3, early_stopping=True, random_state=seed, max_iter=200)
        if hidden
        # tol 1e-4: ~3x the time, same hits
        else LogisticRegression(C=0.5, max_iter=500, tol=1e-3, class_weight=class_weight)
    )
    n_groups = len(set(groups.tolist())) if groups is not None else 0
    grouped = 2 <= n_groups < len(groups)  # one group cannot be split: plain folds then
    if grouped:
        k = min(k, n_groups)
        cv = StratifiedGroupKFold(k, shuffle=True, random_state=seed)
    else:
        cv = StratifiedKFold(k, shuffle=True, random_state=seed)
    pipe = make_pipeline(StandardScaler(), clf)
    return cross_val_predict(pipe, x, y, cv=cv, groups=groups if grouped else None)


def _sample(y: np.ndarray, cap: int, seed: int = 0) -> np.ndarray:
    """Up to `cap` indices, stratified by class, fixed by the seed (label_issues' sampler)."""
    from graft.components.label_issues import stratified_sample

    return stratified_sample(y, cap, seed)


def taps(base) -> tuple[list[tuple[str, str]], list[str], list[float]]:
    """Probe layers and stage starts from the base's feature-map sizes.

    A stage is a run of layers with one feature-map size. Taps: the base's output, then in
    each of the two stages before the last, its widest latest layer (for MobileNetV2 at 224:
    out_relu, block_13_expand_relu, block_6_expand_relu).

    Args:
        base: the built Keras base model.

    Returns:
        (the taps as (layer, "HxW" feature-map size) pairs, the stage start layers, each
        start's share of the base's layers up to the top).
    """
    from graft.components import model as gmodel

    shapes = gmodel.feature_map_shapes(base)
    starts = gmodel.stage_starts(base)
    sizes = [shapes[i][1] for i in starts]
    names = [layer.name for layer in base.layers]
    out = [(names[-1], "final")]
    for k in range(len(sizes) - 2, max(-1, len(sizes) - 4), -1):
        lo, hi = starts[k], starts[k + 1]
        best = max(
            (i for i in range(lo, hi) if shapes[i] and shapes[i][1] == sizes[k]),
            key=lambda i: (shapes[i][3] or 0, i),
        )
        out.append((names[best], f"{sizes[k]}x{sizes[k]}"))
    n = len(names)
    return out, [names[i] for i in starts], [(n - i) / n for i in starts]


@dataclass
class AdviceResult:
    """The plan as written to advice.json: overrides, decisions, the evidence, and your
    settings it kept."""

    recipe: str
    cell: dict
    overrides: dict
    decisions: list[dict]
    evidence: dict | None
    seconds: float
    # your settings the plan would have changed: key -> {"yours": value, "advise": its choice}
    kept: dict = field(default_factory=dict)


def _train_counts(examples_dir: str, validation_dir: str | None):
    """Training rows, val count, images per class, the median longer side and each training
    image's fold group (data.group_by; an ungrouped image is its own)."""
    from graft.components import features as gfeat
    from graft.components.manifest import excluded_from_eval, excluded_from_train, read_manifest

    rows = read_manifest(examples_dir)
    train_rows = gfeat.split_rows(examples_dir, "train", excluded_from_train(validation_dir))
    n_val = len(gfeat.split_rows(examples_dir, "val", excluded_from_eval(validation_dir)))
    per_class: dict[str, int] = {}
    for r in train_rows:
        per_class[r["label"]] = per_class.get(r["label"], 0) + 1
    side = int(median(max(r["height"], r["width"]) for r in rows))
    groups = {r["sha256"]: r.get("group") or r["sha256"] for r in train_rows}
    return train_rows, n_val, per_class, side, groups


def _probe_sizes(base_name: str, side: int, image_size: int) -> list[int]:
    """The input size, and the photos' own (rounded up to 32) when well below it."""
    from graft.components import model as gmodel

    small_side = max(gmodel.backbone(base_name).min_size, 32 * math.ceil(side / 32))
    return [image_size, small_side] if small_side <= 0.75 * image_size else [image_size]


def _squash_features(examples_dir, validation_dir, splits, layers, extractor, store, stage):
    """Every image's pooled tap features per split, squashed (the probes that place the data
    in the matrix see Graft's default; measure_geometry compares the others on the same
    sample); test is excluded as val is. Returns the features and the exclusions."""
    from graft.components import data as gdata
    from graft.components import features as gfeat
    from graft.components.manifest import excluded_from_eval, excluded_from_train

    excl = {"train": excluded_from_train(validation_dir), "val": excluded_from_eval(validation_dir)}
    excl["test"] = excl["val"]
    got = {
        split: gfeat.split_features(
            examples_dir,
            split,
            layers,
            extractor=extractor,
            store=store,
            exclude=excl[split],
            stage=stage[split],
            geometry=gdata.SQUASH,
        )
        for split in splits
    }
    return got, excl


def _tap_probes(feats, tap_list, size: int, idx, y, groups, folds: int) -> list[Probe]:
    """A k-fold linear probe per tap on the sample `idx`, each logged."""
    from graft.components.stats import wilson

    out = []
    for name, depth in tap_list:
        x = feats.x[name][idx]
        hits = probe(x, y, folds, groups=groups)
        lo, hi = wilson(int(hits.sum()), len(hits))
        p = Probe(name, depth, size, x.shape[1], float(hits.mean()), lo, hi, len(hits))
        p.correct = hits.tolist()
        out.append(p)
        log(f"advise: probe {depth:>6} {name} at {size}px ({x.shape[1]}-d): {_fmt(p)}")
    return out


def _multi_probe(feats, tap_list, size: int, idx, y, groups, folds: int) -> Probe | None:
    """A k-fold linear probe on every tap's pooled features side by side (the probe
    standardises each channel, as head.normalize does), logged; None with one tap only."""
    from graft.components.stats import wilson

    if len(tap_list) < 2:
        return None
    layers = [name for name, _ in tap_list]
    x = feats.joined(layers)[idx]
    hits = probe(x, y, folds, groups=groups)
    lo, hi = wilson(int(hits.sum()), len(hits))
    p = Probe("+".join(layers), MULTI, size, x.shape[1], float(hits.mean()), lo, hi, len(hits))
    p.correct = hits.tolist()
    log(f"advise: probe {MULTI:>6} {len(layers)} taps at {size}px ({x.shape[1]}-d): {_fmt(p)}")
    return p


def _hidden_gains(at: list[Probe], feats, idx, y, groups, folds: int) -> dict[str, dict]:
    """A 256-unit hidden layer's paired gain over linear, on the layers the plan can choose:
    the last one, and the best probing (ties to the earlier)."""
    from graft.components.stats import paired_difference

    hidden = {}
    best = max(reversed(at), key=lambda q: q.accuracy)
    for p in [at[0]] + ([best] if best is not at[0] else []):
        mlp = probe(feats.joined(p.layer.split("+"))[idx], y, folds, hidden=256, groups=groups)
        g = hidden[p.layer] = paired_difference(mlp, np.array(p.correct))
        log(
            f"advise: probe {p.depth:>6} with a 256-unit hidden layer: {mlp.mean():.3f} "
            f"(gain over linear {g['difference']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}])"
        )
    return hidden


def measure(
    examples_dir: str,
    validation_dir: str | None,
    *,
    base_cfg,
    image_size: int,
    store_root: str,
    folds: int,
    max_probe_images: int,
) -> Evidence:
    """The evidence the plan reads: counts, the photos' size, tap probes at each probed size,
    the hidden-layer gains and the forward speed at the input size, and the label check."""
    import keras

    from graft.components import data as gdata
    from graft.components import features as gfeat
    from graft.components import model as gmodel
    from graft.components.model import BackbonePreprocess

    t0 = time.time()
    train_rows, n_val, per_class, side, group_by_sha = _train_counts(examples_dir, validation_dir)
    cfg_full = base_cfg.model_copy(update={"cut_at": None})
    ev = Evidence(
        base=base_cfg.name,
        image_size=image_size,
        n_train=len(train_rows),
        n_val=n_val,
        n_classes=len(per_class),
        per_class_min=min(per_class.values()) if per_class else 0,
        per_class_max=max(per_class.values()) if per_class else 0,
        median_side=side,
        probes=[],
        stage_starts=[],
        stage_fraction=[],
        base_layers=[],
        images_per_s=0.0,
    )
    for size in _probe_sizes(base_cfg.name, side, image_size):
        keras.backend.clear_session()
        base = gmodel.build_base(cfg_full, size)
        tap_list, starts, frac = taps(base)
        layers = [name for name, _ in tap_list]
        fp = base.graft_fingerprint
        store = gfeat.FeatureStore(store_root, fp, size, gdata.SQUASH) if store_root else None
        extractor = gfeat.pooled_extractor(base, BackbonePreprocess(base_cfg.name), layers)
        # val too: the head stage reads it from the store next
        stage = {"train": "advise", "val": "advise", "test": "advise: label check"}
        got, excl = _squash_features(
            examples_dir, validation_dir, ("train", "val"), layers, extractor, store, stage
        )
        feats = got["train"]
        if size == image_size:
            ev.stage_starts, ev.stage_fraction = starts, frac
            ev.base_layers = [layer.name for layer in base.layers]
            # the label check scores every labelled image: test joins train and val
            got |= _squash_features(
                examples_dir, validation_dir, ("test",), layers, extractor, store, stage
            )[0]
            ev.label_check = _label_check(examples_dir, got, excl, layers[0], size, folds)
        # the passes just made (the fastest: load only slows one), else a timing of its own
        ev.speeds[size] = round(_fastest_pass(got.values()) or _speed(extractor, size), 1)
        if size == image_size:
            ev.images_per_s = ev.speeds[size]
        idx = _sample(feats.y, max_probe_images)
        y, groups = feats.y[idx], np.array([group_by_sha[s] for s in feats.sha256])[idx]
        at = _tap_probes(feats, tap_list, size, idx, y, groups, folds)
        multi = _multi_probe(feats, tap_list, size, idx, y, groups, folds)
        ev.probes += at + ([multi] if multi else [])
        if size == image_size:
            ev.hidden_head = _hidden_gains(at, feats, idx, y, groups, folds)
            if multi and _gap(multi, max(at, key=lambda q: q.accuracy))["difference"] > 0:
                ev.hidden_head |= _hidden_gains([multi], feats, idx, y, groups, folds)
    ev.seconds = round(time.time() - t0, 2)
    return ev


def _label_check(examples_dir: str, got: dict, exclude: dict, layer: str, size: int, folds: int):
    """label_issues.check on `layer`'s features of every split in `got`, pooled (an image in
    two splits once)."""
    from graft.components import data as gdata
    from graft.components import features as gfeat
    from graft.components import label_issues

    rows = [r for split in got for r in gfeat.split_rows(examples_dir, split, exclude[split])]
    x = np.concatenate([f.x[layer] for f in got.values() if len(f.sha256)])
    y = np.concatenate([f.y for f in got.values()])
    first = {r["sha256"]: i for i, r in reversed(list(enumerate(rows)))}
    keep = sorted(first.values())
    labels = gdata.read_labels(examples_dir) or []
    return label_issues.check(
        x[keep], y[keep], [rows[i] for i in keep], labels, folds=folds, layer=layer, size=size
    )


def _fastest_pass(passes) -> float | None:
    """The highest images per second among feature passes of at least 64 computed images."""
    rates = [g.computed / g.seconds for g in passes if g.computed >= 64 and g.seconds > 0]
    return max(rates, default=None)


def _speed(extractor, size: int, batch: int = 32, reps: int = 2) -> float:
    """Images per second of the base's forward pass here (a warm-up call, then timed ones)."""
    import tensorflow as tf

    x = tf.random.uniform([batch, size, size, 3], 0, 255)
    fn = tf.function(lambda t: extractor(t, training=False))
    fn(x)
    t0 = time.time()
    for _ in range(reps):
        fn(x)
    return batch * reps / max(time.time() - t0, 1e-6)


def _probe_sample(examples_dir: str, validation_dir: str | None, cap: int):
    """The training images measure's probes use (sha256s, labels, fold groups), in the order
    of its features: the same images and folds for every geometry; and whether every one is
    square (ingest's width and height), where pad's letterbox has no bars and is squash."""
    from graft.components import data as gdata
    from graft.components import features as gfeat
    from graft.components.manifest import excluded_from_train

    rows = gfeat.split_rows(examples_dir, "train", excluded_from_train(validation_dir))
    index = {lab: i for i, lab in enumerate(gdata.read_labels(examples_dir) or [])}
    y = np.array([index[r["label"]] for r in rows], dtype=np.int64)
    idx = _sample(y, cap)
    shas = [rows[i]["sha256"] for i in idx]
    groups = np.array([rows[i].get("group") or rows[i]["sha256"] for i in idx])
    square = all(rows[i].get("width") and rows[i]["width"] == rows[i].get("height") for i in idx)
    return shas, y[idx], groups, square


# the last probe extractor built, by (base config, size, layer): the geometry, flip, views
# and refit probes read the same layer at the same size, and building the base again (and
# tracing its forward pass) cost ~3 s each on 2 cores; advise() empties it when it returns
_EXTRACTOR: dict = {}


def _releasing_probe_base(fn):
    """`fn` with _EXTRACTOR emptied when it returns or raises: the probes' base is not held
    past advise."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        finally:
            _EXTRACTOR.clear()

    return run


def _probe_extractor(base_cfg, size: int, cut_at: str | None):
    """The whole base at `size`, the layer the run reads (its cut, else the last) and a pooled
    extractor of that layer: what the geometry, flip, views and refit probes run."""
    import keras

    from graft.components import features as gfeat
    from graft.components import model as gmodel
    from graft.components.model import BackbonePreprocess

    whole = base_cfg.model_copy(update={"cut_at": None})
    key = (whole.model_dump_json(), size, cut_at)
    if key not in _EXTRACTOR:
        _EXTRACTOR.clear()
        keras.backend.clear_session()
        base = gmodel.build_base(whole, size)
        layer = cut_at or base.layers[-1].name
        extractor = gfeat.pooled_extractor(base, BackbonePreprocess(base_cfg.name), [layer])
        _EXTRACTOR[key] = (base, layer, extractor)
    return _EXTRACTOR[key]


def _sample_features(
    examples_dir, validation_dir, shas, *, base, layer, extractor, size, store_root, geometry,
    mirror=False, stage, view=None,
):  # fmt: skip
    """The probe sample's pooled features of `layer` in one geometry (or its mirror images, or
    an augmented view: views.View), through the feature store, in the sample's order."""
    from graft.components import features as gfeat
    from graft.components.manifest import excluded_from_train

    store = (
        gfeat.FeatureStore(store_root, base.graft_fingerprint, size, geometry, mirror, view)
        if store_root
        else None
    )
    feats = gfeat.split_features(
        examples_dir,
        "train",
        [layer],
        extractor=extractor,
        store=store,
        exclude=excluded_from_train(validation_dir),
        stage=stage,
        geometry=geometry,
        only=set(shas),
        mirror=mirror,
        view=view,
    )
    if feats.sha256 != shas:
        raise RuntimeError(f"{stage}: probe sample out of order")  # a bug
    return feats


def _geometry_modes(hits_of: dict, default: str, size: int, layer: str) -> dict[str, dict]:
    """Per mode: accuracy with its Wilson interval and, for the others, the paired gain over
    `default` with its one-sided 90% bound (`low90`, the rule's); each logged."""
    from graft.components.stats import paired_difference, wilson

    modes: dict[str, dict] = {}
    for mode, hits in hits_of.items():
        lo, hi = wilson(int(hits.sum()), len(hits))
        modes[mode] = {"accuracy": float(hits.mean()), "low": lo, "high": hi}
        if mode != default:
            gain = paired_difference(hits, hits_of[default])
            gain["low90"] = paired_difference(hits, hits_of[default], level=0.80)["low"]
            modes[mode]["gain"] = gain
        gain = modes[mode].get("gain")
        log(
            f"advise: geometry {mode:>6} at {size}px ({layer}): {hits.mean():.3f} "
            f"[{lo:.3f}, {hi:.3f}]"
            + (
                f", paired gain over {default} {gain['difference']:+.3f} "
                f"[{gain['low']:+.3f}, {gain['high']:+.3f}], 90% bound {gain['low90']:+.3f}"
                if gain
                else " (the base's own)"
            )
        )
    return modes


def measure_geometry(
    examples_dir: str,
    validation_dir: str | None,
    *,
    ev: Evidence,
    base_cfg,
    size: int,
    cut_at: str | None,
    store_root: str,
    folds: int,
    max_probe_images: int,
    crop_fraction: float,
    default: str = "squash",
) -> dict:
    """Linear probes of one layer at one size on the probe sample, per data.resize mode, on
    the same folds; each other mode's paired gain over `default` (the base's own). One base
    forward pass per mode over the sample only (the store keeps them; squash is measure's;
    none for pad when every sampled image is square)."""
    from graft.components import data as gdata

    t0 = time.time()
    shas, y, groups, square = _probe_sample(examples_dir, validation_dir, max_probe_images)
    base, layer, extractor = _probe_extractor(base_cfg, size, cut_at)
    known = next(
        (p for p in ev.probes if p.size == size and p.layer == layer and len(p.correct) == len(y)),
        None,
    )
    hits_of: dict[str, np.ndarray] = {}
    for mode in gdata.RESIZE_MODES:
        if mode == "squash" and known is not None:
            hits_of[mode] = np.array(known.correct)
        elif mode == "pad" and square and "squash" in hits_of:
            # a square image's letterbox is the image at size x size: pad's pixels are squash's
            log("advise: geometry pad: every probed image is square, so pad is squash (no pass)")
            hits_of[mode] = hits_of["squash"]
        else:
            feats = _sample_features(
                examples_dir, validation_dir, shas, base=base, layer=layer,
                extractor=extractor, size=size, store_root=store_root,
                geometry=gdata.Geometry(mode, crop_fraction), stage=f"advise: geometry {mode}",
            )  # fmt: skip
            hits_of[mode] = probe(feats.x[layer], y, folds, groups=groups)
    return {
        "size": size,
        "layer": layer,
        "n": len(y),
        "folds": folds,
        "crop_fraction": crop_fraction,
        "square": square,
        "default": default,
        "rule": GEOMETRY_RULE,
        "modes": _geometry_modes(hits_of, default, size, layer),
        "seconds": round(time.time() - t0, 2),
    }


FLIP_RULE = (
    "serve the mean of the scores for the image and its mirror image (export.flip_average: "
    "twice the inference per request) only when the same k-fold probe scores better that way "
    "with a paired 95% interval of the gain above 0"
)


def flip_hits(x, x_mirror, y, folds: int, groups=None, seed: int = 0):
    """Out-of-fold hits of advise's linear probe, plain and averaged over the image and its
    mirror image: the same folds as `probe`, each fold's classifier trained on plain images
    (as the cached head is) and scored both ways.

    Args:
        x: pooled features of the images.
        x_mirror: pooled features of their mirror images, in the same order.
        y: the class indices.
        folds: k, lowered to the smallest class's count (at least 2).
        groups: each image's group (data.group_by), or None.
        seed: seeds the folds.

    Returns:
        (plain hits, flip-averaged hits): one bool per image each.
    """
    from sklearn.base import clone
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    k = max(2, min(folds, int(np.bincount(y).min())))
    n_groups = len(set(groups.tolist())) if groups is not None else 0
    grouped = 2 <= n_groups < len(groups)
    cv = (
        StratifiedGroupKFold(min(k, n_groups), shuffle=True, random_state=seed)
        if grouped
        else StratifiedKFold(k, shuffle=True, random_state=seed)
    )
    pipe = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=500, tol=1e-3))
    plain = np.zeros(len(y), bool)
    both = np.zeros(len(y), bool)
    for fit, held in cv.split(x, y, groups if grouped else None):
        clf = clone(pipe).fit(x[fit], y[fit])
        p = clf.predict_proba(x[held])
        pm = clf.predict_proba(x_mirror[held])
        plain[held] = clf.classes_[p.argmax(1)] == y[held]
        both[held] = clf.classes_[(p + pm).argmax(1)] == y[held]
    return plain, both


def measure_flip(
    examples_dir: str,
    validation_dir: str | None,
    *,
    base_cfg,
    size: int,
    cut_at: str | None,
    geometry,
    store_root: str,
    folds: int,
    max_probe_images: int,
) -> dict:
    """Test-time flips on the probe sample, at the run's size, layer and geometry: one base
    pass over the mirror images (the store keeps them; the plain ones are the geometry
    probe's)."""
    from graft.components.stats import paired_difference

    t0 = time.time()
    shas, y, groups, _ = _probe_sample(examples_dir, validation_dir, max_probe_images)
    base, layer, extractor = _probe_extractor(base_cfg, size, cut_at)
    x = {
        mirror: _sample_features(
            examples_dir,
            validation_dir,
            shas,
            base=base,
            layer=layer,
            extractor=extractor,
            size=size,
            store_root=store_root,
            geometry=geometry,
            mirror=mirror,
            stage="advise: test-time flips" + " (mirror images)" * mirror,
        ).x[layer]
        for mirror in (False, True)
    }
    plain, both = flip_hits(x[False], x[True], y, folds, groups)
    gain = paired_difference(both, plain)
    log(
        f"advise: test-time flips at {size}px ({layer}, {geometry.resize}): plain "
        f"{plain.mean():.3f}, flip-averaged {both.mean():.3f}, paired gain "
        f"{gain['difference']:+.3f} [{gain['low']:+.3f}, {gain['high']:+.3f}]"
    )
    return {
        "size": size,
        "layer": layer,
        "resize": geometry.resize,
        "n": len(y),
        "folds": folds,
        "plain": float(plain.mean()),
        "flip_average": float(both.mean()),
        "gain": gain,
        "rule": FLIP_RULE,
        "seconds": round(time.time() - t0, 2),
    }


def plan_flip(p: Plan, flip: dict) -> None:
    """export.flip_average from the flip probe: on only when it wins beyond the noise. Pure.

    Args:
        p: the plan, changed in place.
        flip: measure_flip's evidence: plain and averaged accuracy and their paired gain.
    """
    g = flip["gain"]
    on = g["low"] > 0
    p.overrides["export.flip_average"] = on
    p.decisions.append(
        Decision(
            "test-time flips",
            "on" if on else "off",
            f"{flip['folds']}-fold probes of {flip['layer']} at {flip['size']} px on the same "
            f"{flip['n']} training images: plain {flip['plain']:.3f}, averaged with the mirror "
            f"image {flip['flip_average']:.3f} (paired {g['difference']:+.3f} "
            f"[{g['low']:+.3f}, {g['high']:+.3f}]): "
            + (
                "beyond the noise, worth twice the inference per request"
                if on
                else "not beyond the noise, so one pass per request"
            ),
        )
    )


IMBALANCE_RATIO = 3.0  # over this, largest class / smallest in train, advise probes weights
BALANCE_RULE = (
    f"over {IMBALANCE_RATIO:g}:1 imbalance (the training split's largest class against its "
    "smallest), balanced class weights (n / (C x n_c) per class, train_head.class_weight: "
    "balanced) only when the same k-fold probe trained with them scores a higher macro-F1 than "
    "without, with the paired 95% bootstrap interval of the gain (images resampled, both "
    "macro-F1s recomputed) above 0; else none (each image alike)"
)


def balance_predictions(x, y, folds: int, groups=None, seed: int = 0):
    """Out-of-fold predictions of advise's linear probe without and with balanced class
    weights, on the same folds (the same seed and groups).

    Args:
        x: pooled features of the images.
        y: the class indices.
        folds: k, lowered to the smallest class's count (at least 2).
        groups: each image's group (data.group_by), or None.
        seed: seeds the folds.

    Returns:
        (predictions without weights, predictions with balanced weights).
    """
    return tuple(
        probe_predictions(x, y, folds, seed=seed, groups=groups, class_weight=w)
        for w in (None, "balanced")
    )


def measure_balance(
    examples_dir: str,
    validation_dir: str | None,
    *,
    ev: Evidence,
    base_cfg,
    size: int,
    cut_at: str | None,
    geometry,
    store_root: str,
    folds: int,
    max_probe_images: int,
) -> dict:
    """Class weights on the probe sample, at the run's size, layer and geometry: macro-F1 and
    balanced accuracy of the k-fold probe without and with balanced weights, and the paired
    macro-F1 gain. The features are the flip probe's plain ones (the store keeps them)."""
    from graft.components.stats import balanced_scores, paired_macro_f1

    t0 = time.time()
    shas, y, groups, _ = _probe_sample(examples_dir, validation_dir, max_probe_images)
    base, layer, extractor = _probe_extractor(base_cfg, size, cut_at)
    x = _sample_features(
        examples_dir, validation_dir, shas, base=base, layer=layer, extractor=extractor,
        size=size, store_root=store_root, geometry=geometry, stage="advise: class balance",
    ).x[layer]  # fmt: skip
    plain, weighted = balance_predictions(x, y, folds, groups)
    c = max(ev.n_classes, int(y.max()) + 1)
    scored = {}
    for name, pred in (("none", plain), ("balanced", weighted)):
        f1, bal = (float(v[0]) for v in balanced_scores(y, pred, c))
        accuracy = float(np.mean(pred == y))
        scored[name] = {"macro_f1": f1, "balanced_accuracy": bal, "accuracy": accuracy}
    gain = paired_macro_f1(y, weighted, plain, c)
    log(
        f"advise: class balance at {size}px ({layer}, {geometry.resize}), imbalance "
        f"{ev.imbalance:.1f}:1: macro-F1 without weights {scored['none']['macro_f1']:.3f}, "
        f"balanced {scored['balanced']['macro_f1']:.3f}, paired gain {gain['difference']:+.3f} "
        f"[{gain['low']:+.3f}, {gain['high']:+.3f}]"
    )
    return {
        "size": size,
        "layer": layer,
        "resize": geometry.resize,
        "n": len(y),
        "folds": folds,
        "imbalance": round(ev.imbalance, 2),
        "per_class_min": ev.per_class_min,
        "per_class_max": ev.per_class_max,
        "sample_per_class": np.bincount(y, minlength=c).tolist(),
        **scored,
        "gain": gain,
        "rule": BALANCE_RULE,
        "seconds": round(time.time() - t0, 2),
    }


def plan_balance(p: Plan, ev: Evidence) -> None:
    """train_head.class_weight from the class-balance probe: balanced unless it loses
    beyond the noise; no override, and a line saying why no probe ran, at or under
    IMBALANCE_RATIO. Pure.

    Args:
        p: the plan, changed in place.
        ev: the evidence: its class counts and `balance` (measure_balance's, or None).
    """
    counts = (
        f"{ev.per_class_max} vs {ev.per_class_min} training images in the largest and smallest "
        f"class ({ev.imbalance:.1f}:1)"
    )
    b = ev.balance
    if b is None:
        p.decisions.append(
            Decision(
                "class balance",
                "not probed",
                f"{counts}, not over {IMBALANCE_RATIO:g}:1: no probe ran, and "
                "train_head.class_weight stays as configured (auto: balanced weights where the "
                "class counts differ)",
            )
        )
        return
    g = b["gain"]
    # over 3:1 the weights stay on (the default's choice) unless they lose beyond the noise: on
    # a few dozen images sklearn's probe separates the classes with or without them, while the
    # early-stopped Keras head is still moved by them (tiny data: +0.31 test macro-F1 by hand)
    on = g["high"] >= 0
    choice = "balanced" if on else "none"
    p.overrides["train_head.class_weight"] = choice
    p.decisions.append(
        Decision(
            "class balance",
            choice,
            f"{counts}: {b['folds']}-fold probes of {b['layer']} at {b['size']} px on the same "
            f"{b['n']} training images: macro-F1 without weights {b['none']['macro_f1']:.3f}, "
            f"with balanced weights {b['balanced']['macro_f1']:.3f} (paired "
            f"{g['difference']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}]); balanced accuracy "
            f"{b['none']['balanced_accuracy']:.3f} vs {b['balanced']['balanced_accuracy']:.3f}: "
            + (
                "balanced weights are kept (they do not lose beyond the noise)"
                if on
                else "balanced weights lose beyond the noise, so each image alike"
            ),
        )
    )


def _probe_balance(
    p: Plan, ev: Evidence, examples_dir, validation_dir, *, base_cfg, image_size, keep,
    geometry, store_root, folds, max_probe_images, seed,
):  # fmt: skip
    """Over IMBALANCE_RATIO, the class-balance probe at the point and in the geometry the run
    will train with; then its plan line (also when no probe ran)."""
    if ev.imbalance > IMBALANCE_RATIO:
        size, cut = _probe_point(p, keep, image_size, base_cfg.cut_at)
        _seed(seed)
        ev.balance = measure_balance(
            examples_dir, validation_dir, ev=ev, base_cfg=base_cfg, size=size, cut_at=cut,
            geometry=_run_geometry(p, keep, geometry), store_root=store_root, folds=folds,
            max_probe_images=max_probe_images,
        )  # fmt: skip
    plan_balance(p, ev)


VIEW_CANDIDATES = (2, 4)  # K views per training image that advise probes, cheapest first
VIEWS_RULE = (
    "train the head on K augmented views of each training image (train_head.feature_views) "
    "for the smallest K whose k-fold paired gain over none has a one-sided 90% bound above 0; "
    "larger K is probed only while the smaller is not beyond the noise (each view costs one "
    "base pass per training image, once: the feature store keeps it)"
)


def _views_win(candidate: dict) -> bool:
    return _low90(candidate["gain"]) > 0


def measure_views(
    examples_dir: str,
    validation_dir: str | None,
    *,
    base_cfg,
    size: int,
    cut_at: str | None,
    geometry,
    store_root: str,
    folds: int,
    max_probe_images: int,
    n_train: int,
    images_per_s: float,
    candidates: tuple[int, ...] = VIEW_CANDIDATES,
) -> dict:
    """K augmented views per image on the probe sample, at the run's size, layer and geometry:
    per K, the paired k-fold gain of training each fold on its images and their views over its
    images alone (held-out images plain, their views never in a fold's training), and its
    seconds: here, and estimated for the whole training split at images_per_s.

    Args:
        examples_dir: the ingest step's output.
        validation_dir: the validate step's output (images left out), or None.
        base_cfg: the `base` section.
        size: the input size the run trains at.
        cut_at: the layer the run reads (base.cut_at), or None for the last.
        geometry: the geometry the run uses.
        store_root: the feature store ("" for none).
        folds: k of the probes.
        max_probe_images: the probe sample's cap.
        n_train: the training images the head would read views of.
        images_per_s: the base's measured forward speed.
        candidates: the K probed, smallest first; probing stops at the first beyond the noise,
            or at one that gained nothing.

    Returns:
        The evidence: per K probed, accuracy, paired gain (with low90) and seconds.
    """
    from graft.components import views as gviews
    from graft.components.stats import paired_difference

    t0 = time.time()
    shas, y, groups, _ = _probe_sample(examples_dir, validation_dir, max_probe_images)
    base, layer, extractor = _probe_extractor(base_cfg, size, cut_at)
    common = dict(
        base=base, layer=layer, extractor=extractor, size=size, store_root=store_root,
        geometry=geometry,
    )  # fmt: skip
    x = _sample_features(
        examples_dir, validation_dir, shas, **common, stage="advise: views (plain)"
    ).x[layer]
    plain = gviews.views_hits(x, [], y, folds, groups)
    x_views: list[np.ndarray] = []
    out: list[dict] = []
    spent = 0.0
    for k in candidates:
        t_k = time.time()
        for v in range(len(x_views) + 1, k + 1):
            feats = _sample_features(
                examples_dir, validation_dir, shas, **common,
                view=gviews.View(v), stage=f"advise: views (view {v})",
            )  # fmt: skip
            x_views.append(feats.x[layer])
        viewed = gviews.views_hits(x, x_views[:k], y, folds, groups)
        spent += time.time() - t_k
        gain = paired_difference(viewed, plain)
        gain["low90"] = paired_difference(viewed, plain, level=0.80)["low"]
        train_s = k * n_train / max(images_per_s, 1e-9)
        out.append({
            "views": k, "accuracy": float(viewed.mean()), "gain": gain,
            "probe_seconds": round(spent, 2), "train_seconds": round(train_s, 1),
            "gain_per_minute": gain["difference"] / max(train_s / 60, 1e-9),
        })  # fmt: skip
        log(
            f"advise: {k} view(s) at {size}px ({layer}, {geometry.resize}): {viewed.mean():.3f} "
            f"vs {plain.mean():.3f} plain, paired gain {gain['difference']:+.3f} "
            f"[{gain['low']:+.3f}, {gain['high']:+.3f}], 90% bound {gain['low90']:+.3f}; "
            f"~{train_s:.0f}s of base passes for {n_train} training images"
        )
        if _views_win(out[-1]) or gain["difference"] <= 0:
            break  # more views of a transform that did not help are passes for nothing
    return {
        "size": size,
        "layer": layer,
        "resize": geometry.resize,
        "augment": gviews.DEFAULT_AUGMENT.key,
        "n": len(y),
        "n_train": n_train,
        "folds": folds,
        "plain": float(plain.mean()),
        "candidates": out,
        "rule": VIEWS_RULE,
        "seconds": round(time.time() - t0, 2),
    }


def plan_views(p: Plan, views: dict) -> None:
    """train_head.feature_views from the views probe: the smallest K beyond the noise. Pure.

    Args:
        p: the plan, changed in place.
        views: measure_views' evidence: per K, its paired gain and seconds.
    """
    won = [c for c in views["candidates"] if _views_win(c)]
    chosen = min((c["views"] for c in won), default=0)
    p.overrides["train_head.feature_views"] = chosen
    parts = [
        f"{c['views']} views {c['accuracy']:.3f} (paired {c['gain']['difference']:+.3f} "
        f"[{c['gain']['low']:+.3f}, {c['gain']['high']:+.3f}], 90% bound "
        f"{_low90(c['gain']):+.3f}; ~{c['train_seconds']:.0f}s for the "
        f"{views['n_train']} training images)"
        for c in views["candidates"]
    ]
    p.decisions.append(
        Decision(
            "augmented views",
            chosen or "none",
            f"{views['folds']}-fold probes of {views['layer']} at {views['size']} px on the same "
            f"{views['n']} training images: none {views['plain']:.3f}, "
            + ", ".join(parts)
            + ": "
            + (
                f"{chosen} views beyond the noise, the fewest that are"
                if chosen
                else "no K beyond the noise, so the head trains on the images alone"
            ),
        )
    )


def _views_blocked(keep: dict[str, Any]) -> str | None:
    """The user's setting that keeps the head off cached features, where views live."""
    if keep.get("train_head.augment") is True:
        return "train_head.augment=true"
    if keep.get("train_head.feature_cache") == "off":
        return "train_head.feature_cache=off"
    return None


def _probe_views(p: Plan, ev: Evidence, examples_dir, validation_dir, *, keep, size, cut,
                 geometry, base_cfg, **sample):  # fmt: skip
    """The views probe and its plan on small data, unless the user's settings train the head
    on images. Large data is not probed: K more base passes over up to max_probe_images
    images (minutes at 224 px on 2 cores), where more images already give the variety."""
    blocked = _views_blocked(keep)
    if blocked:
        p.decisions.append(
            Decision("augmented views", "not probed", f"kept your setting {blocked}: the head "
                     "trains on images, and views are of cached features")
        )  # fmt: skip
        return
    if p.cell.get("size") != "small":
        p.decisions.append(
            Decision("augmented views", "not probed", f"{ev.n_train} training images, not "
                     "small data (advise.small_data): views are probed on small data only")
        )  # fmt: skip
        return
    ev.views = measure_views(
        examples_dir, validation_dir, base_cfg=base_cfg, size=size, cut_at=cut,
        geometry=geometry, n_train=ev.n_train, images_per_s=ev.images_per_s, **sample,
    )  # fmt: skip
    plan_views(p, ev.views)


def _probe_point(p: Plan, keep: dict[str, Any], image_size: int, cut_at: str | None):
    """The input size and cut the run will train at: the plan's, or the user's kept ones."""
    from graft.core.config import kept_by

    size = image_size if kept_by("data.image_size", list(keep)) else None
    cut = cut_at if kept_by("base.cut_at", list(keep)) else p.overrides.get("base.cut_at")
    return size or p.overrides.get("data.image_size", image_size), cut


def _probe_geometry_and_flips(
    p: Plan, ev: Evidence, examples_dir, validation_dir, *, base_cfg, image_size, keep,
    geometry, store_root, folds, max_probe_images, seed,
):  # fmt: skip
    """At the point the run will train at (size, cut): the geometry probes and plan, then the
    flip probe in the geometry the run will use, and its plan."""
    size, cut = _probe_point(p, keep, image_size, base_cfg.cut_at)
    sample = {"store_root": store_root, "folds": folds, "max_probe_images": max_probe_images}
    _seed(seed)
    ev.geometry = measure_geometry(
        examples_dir, validation_dir, ev=ev, base_cfg=base_cfg, size=size, cut_at=cut,
        crop_fraction=geometry.crop_fraction if geometry is not None else 0.875,
        default=base_geometry(base_cfg), **sample,
    )  # fmt: skip
    plan_geometry(p, ev.geometry)
    _seed(seed)
    ev.flip = measure_flip(
        examples_dir, validation_dir, base_cfg=base_cfg, size=size, cut_at=cut,
        geometry=_run_geometry(p, keep, geometry), **sample,
    )  # fmt: skip
    plan_flip(p, ev.flip)
    _seed(seed)
    _probe_views(
        p, ev, examples_dir, validation_dir, keep=keep, size=size, cut=cut,
        geometry=_run_geometry(p, keep, geometry), base_cfg=base_cfg, **sample,
    )  # fmt: skip


def _plan_auto(
    examples_dir, validation_dir, *, base_cfg, image_size, store_root, folds, max_probe_images,
    small_data, budget_minutes, keep, geometry, bases, seed,
) -> tuple[Evidence, Plan, dict]:  # fmt: skip
    """recipe auto: the base (among advise.bases), then measure, the plan, the geometry and the
    flips, all on the chosen base. Returns the evidence, the plan and the kept base settings."""
    from graft.core.config import kept_by

    t0 = time.time()  # the run's budget pays for advise too

    sample = {"store_root": store_root, "folds": folds, "max_probe_images": max_probe_images}
    bases_ev, chosen, base_decision, base_cfg, image_size = _choose_among_bases(
        examples_dir, validation_dir, base_cfg=base_cfg, bases=bases, image_size=image_size,
        keep=keep, seed=seed, **sample,
    )  # fmt: skip
    _seed(seed)
    ev = measure(examples_dir, validation_dir, base_cfg=base_cfg, image_size=image_size, **sample)
    ev.spent_s = round(time.time() - t0, 1)
    # the geometry and flip probes' passes to come: two other geometries, the mirror images
    ev.later_probe_images = 3 * min(ev.n_train, max_probe_images)
    p = plan(ev, budget_minutes=budget_minutes, small_data=small_data)
    kept_base: dict = {}
    if bases_ev is not None:
        ev.bases = bases_ev
        mine = {k: v for k, v in keep.items() if kept_by("base", [k])}
        kept_base = plan_base(p, chosen, base_decision, mine)
    _probe_geometry_and_flips(
        p, ev, examples_dir, validation_dir, base_cfg=base_cfg, image_size=image_size,
        keep=keep, geometry=geometry, seed=seed, **sample,
    )  # fmt: skip
    _probe_balance(
        p, ev, examples_dir, validation_dir, base_cfg=base_cfg, image_size=image_size,
        keep=keep, geometry=geometry, seed=seed, **sample,
    )  # fmt: skip
    _probe_refit(
        p, ev, examples_dir, validation_dir, base_cfg=base_cfg, image_size=image_size,
        keep=keep, geometry=geometry, seed=seed, small_data=small_data, **sample,
    )  # fmt: skip
    return ev, p, kept_base


def _write_advice(out_dir: str, res: AdviceResult) -> None:
    """advice.json and advice.md in `out_dir`, and the plan's table in the log."""
    with open(os.path.join(out_dir, "advice.json"), "w") as f:
        json.dump(asdict(res), f, indent=2)
    with open(os.path.join(out_dir, "advice.md"), "w") as f:
        f.write(advice_markdown(res))
    for line in advice_table(res).splitlines():
        log(f"advise: {line}")


@_releasing_probe_base
def advise(
    examples_dir: str,
    validation_dir: str | None,
    out_dir: str,
    *,
    recipe: str,
    base_cfg,
    image_size: int,
    store_root: str,
    folds: int,
    max_probe_images: int,
    small_data: int,
    budget_minutes: float,
    keep: dict[str, Any] | None = None,
    geometry=None,
    bases: list | None = None,
    seed: int = 0,
) -> AdviceResult:
    """Measure (auto), plan, and write advice.json + advice.md; manual plans nothing.

    `keep`: the user's settings (dotted key -> value); the plan never changes them, and says
    what it would have chosen instead. `geometry`: the config's data.resize (its crop_fraction
    is the one crop is probed with). `bases`: advise.bases, probed beside base_cfg first;
    measure and every later decision then run on the base chosen. `seed`: train.seed, set
    before each probe builds a base, so a random-init base is the one the training builds.

    Args:
        examples_dir: the ingest step's output.
        validation_dir: the validate step's output (images left out), or None.
        out_dir: where advice.json, advice.md and label_issues.json are written.
        recipe: advise.recipe: "auto" (measure and plan), "seed" or "manual".
        base_cfg: the `base` section.
        image_size: the configured input size in pixels.
        store_root: the feature store the probes' pooled features are kept in.
        folds: k of the probes' cross-validation.
        max_probe_images: the most training images the probes use.
        small_data: below this many training images, the data counts as small.
        budget_minutes: the run's time budget, advise's probes and training.
        keep: the user's settings (dotted key -> value), which the plan never changes.
        geometry: the config's data.resize, or None.
        bases: advise.bases, probed beside base_cfg; None or empty for none.
        seed: train.seed, set before each probe builds a base.

    Returns:
        The AdviceResult, also written to `out_dir`/advice.json.
    """
    t0 = time.time()
    os.makedirs(out_dir, exist_ok=True)
    ev = None
    kept_base: dict = {}
    if recipe == "auto":
        ev, p, kept_base = _plan_auto(
            examples_dir, validation_dir, base_cfg=base_cfg, image_size=image_size,
            store_root=store_root, folds=folds, max_probe_images=max_probe_images,
            small_data=small_data, budget_minutes=budget_minutes, keep=keep or {},
            geometry=geometry, bases=bases or [], seed=seed,
        )  # fmt: skip
    elif recipe == "seed":
        from graft.components import model as gmodel

        base = gmodel.build_base(base_cfg.model_copy(update={"cut_at": None, "weights": None}), 96)
        p = seed_plan(base_cfg.name, [layer.name for layer in base.layers])
    else:
        p = Plan("manual", {}, {}, [Decision("recipe", "manual", "the config's sections as set")])
    kept = {**_keep_settings(p, keep or {}), **kept_base}
    _no_taps_past_your_cut(p, kept)
    evidence = None
    if ev is not None:
        evidence = asdict(ev)
        for pr in evidence["probes"]:
            pr.pop("correct")
        _write_label_issues(examples_dir, validation_dir, out_dir, evidence.pop("label_check"))
    res = AdviceResult(
        p.recipe,
        p.cell,
        p.overrides,
        [asdict(x) for x in p.decisions],
        evidence,
        round(time.time() - t0, 2),
        kept,
    )
    _write_advice(out_dir, res)
    return res


def _seed(seed: int) -> None:
    """Seed keras before a probe builds its base: random-init weights are then the same in
    every probe and in the training (start_stage seeds with train.seed too)."""
    import keras

    keras.utils.set_random_seed(seed)


def _choose_among_bases(
    examples_dir, validation_dir, *, base_cfg, bases, image_size, keep, **probe_args
):
    """advise.bases probed and the rule applied: (evidence, chosen entry, decision, the base
    config and input size measure runs at); with no bases listed, today's base and size."""
    from graft.core.config import kept_by

    if not bases:
        return None, None, None, base_cfg, image_size
    ev = measure_bases(
        examples_dir,
        validation_dir,
        base_cfg=base_cfg,
        bases=bases,
        image_size=image_size,
        size_kept=kept_by("data.image_size", list(keep)),
        **probe_args,
    )
    chosen, decision = choose_base(ev)
    mine = kept_by("base", list(keep))
    ev["chosen"] = chosen["label"]
    ev["kept"] = mine and not chosen["configured"]
    log(f"advise: base: {decision.choice}" + (" (your base.* is kept)" if ev["kept"] else ""))
    run_base = _chosen_base_cfg(base_cfg, chosen, mine)
    size = ev["candidates"][0]["size"] if run_base is base_cfg else chosen["size"]
    return ev, chosen, decision, run_base, size


def _run_geometry(p: Plan, keep: dict[str, Any], geometry):
    """The geometry the run will use: the user's kept data.resize, else the plan's."""
    from graft.components import data as gdata
    from graft.core.config import kept_by

    crop_fraction = geometry.crop_fraction if geometry is not None else 0.875
    if geometry is not None and kept_by("data.resize", list(keep)):
        return geometry
    return gdata.Geometry(p.overrides.get("data.resize", "squash"), crop_fraction)


def _write_label_issues(examples_dir, validation_dir, out_dir, doc: dict | None) -> None:
    """label_issues.json: the probe's likely mislabelled images merged with validate's exact
    copies under two classes; the summary and the first few in the log."""
    from graft.components import label_issues

    if doc is None:
        return
    try:
        with open(os.path.join(examples_dir, "stats.json")) as f:
            root = json.load(f).get("source") or ""
    except (OSError, ValueError):
        root = ""
    dups = label_issues.duplicates_across_classes(examples_dir, validation_dir)
    doc = label_issues.write(out_dir, doc, dups, root)
    log(f"advise: {label_issues.summary(doc)}, {doc['seconds']:.1f}s; {label_issues.FILE}")
    for line in label_issues.table(doc, 3).splitlines():
        log(f"advise: {line}")


def _keep_settings(p: Plan, keep: dict[str, Any]) -> dict:
    """Drop the plan's changes to the user's settings; record each with a decision line."""
    from graft.core.config import kept_by

    kept = {}
    for key in list(p.overrides):
        if kept_by(key, list(keep)):
            choice = p.overrides.pop(key)
            yours = {k: v for k, v in keep.items() if kept_by(key, [k])}
            shown = ", ".join(f"{k}={v}" for k, v in yours.items())
            kept[key] = {"yours": yours, "advise": choice}
            would = choice if list(yours) == [key] else f"{key}={choice}"
            p.decisions.append(
                Decision("kept", shown, f"kept your setting {shown} (advise would choose {would})")
            )
    return kept


def _no_taps_past_your_cut(p: Plan, kept: dict) -> None:
    """Advise's taps were probed on the whole base: under your base.cut_at they may not exist,
    so the head reads your cut alone (said in a decision line)."""
    taps = p.overrides.get("head.taps")
    if taps and "base.cut_at" in kept:
        p.overrides["head.taps"] = []
        if "head.normalize" not in kept:
            p.overrides["head.normalize"] = True  # your cut is an inner layer
        p.decisions.append(
            Decision(
                "multi-depth head",
                "no",
                f"your base.cut_at is kept, and the taps advise probed ({', '.join(taps)}) were "
                "measured on the whole base: the head reads your cut's layer alone",
            )
        )


def read_advice(advice_dir: str) -> dict:
    """The advise step's advice.json, for the steps and the report that apply or show it.

    Args:
        advice_dir: the advise step's output.

    Returns:
        advice.json's document (an AdviceResult as a dict).
    """
    with open(os.path.join(advice_dir, "advice.json")) as f:
        return json.load(f)


def advice_table(res: AdviceResult | dict) -> str:
    """The plan as aligned text lines: decision, choice, reason.

    Args:
        res: the AdviceResult, or advice.json's document.

    Returns:
        The lines, joined by newlines, for the log and the terminal.
    """
    r = res if isinstance(res, dict) else asdict(res)
    cell = r["cell"]
    lines = [f"recipe {r['recipe']}"]
    if cell:
        lines[0] += f": {cell['size']} and {cell['similarity']} (the seed's matrix)"
    for x in r["decisions"]:
        lines.append(f"  {x['what']:<13} {str(x['choice']):<34} {x['reason']}")
    return "\n".join(lines)


def advice_markdown(res: AdviceResult | dict) -> str:
    """The plan and its evidence as advice.md: decisions, probes and the optional probes.

    Args:
        res: the AdviceResult, or advice.json's document.

    Returns:
        The Markdown text.
    """
    r = res if isinstance(res, dict) else asdict(res)
    out = [f"# Advice: recipe {r['recipe']}", ""]
    if r["cell"]:
        out += [
            f"Cell of the seed's matrix: **{r['cell']['size']} x {r['cell']['similarity']}**",
            "",
        ]
    out += ["| decision | choice | why |", "|---|---|---|"]
    out += [f"| {x['what']} | {x['choice']} | {x['reason']} |" for x in r["decisions"]]
    ev = r.get("evidence")
    if ev:
        out += [
            "",
            "| probe | layer | size | dim | k-fold accuracy [95%] | n |",
            "|---|---|---|---|---|---|",
        ]
        out += [
            f"| {p['depth']} | {p['layer']} | {p['size']} | {p['dim']} | "
            f"{p['accuracy']:.3f} [{p['low']:.3f}, {p['high']:.3f}] | {p['n']} |"
            for p in ev["probes"]
        ]
        if any(p["depth"] == MULTI for p in ev["probes"]):
            out += ["", f"Multi-depth rule ({MULTI} rows: the taps side by side): {MULTI_RULE}"]
    geo = (ev or {}).get("geometry")
    if geo:
        out += [
            "",
            f"Input geometry (data.resize), {geo['folds']}-fold probes of {geo['layer']} at "
            f"{geo['size']} px on the same {geo['n']} images; rule: {geo['rule']}",
            "",
            f"| resize | k-fold accuracy [95%] | paired gain over {geo.get('default', 'squash')} "
            "[95%] | one-sided 90% bound |",
            "|---|---|---|---|",
        ]
        for m, r in geo["modes"].items():
            g = r.get("gain")
            gain = (
                f"{g['difference']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}] | "
                + (f"{g['low90']:+.3f}" if "low90" in g else "")
                if g
                else "the base's own | "
            )
            out.append(f"| {m} | {r['accuracy']:.3f} [{r['low']:.3f}, {r['high']:.3f}] | {gain} |")
    flip = (ev or {}).get("flip")
    if flip:
        g = flip["gain"]
        out += [
            "",
            f"Test-time flips, {flip['folds']}-fold probes of {flip['layer']} at {flip['size']} "
            f"px ({flip['resize']}) on the same {flip['n']} images: plain {flip['plain']:.3f}, "
            f"flip-averaged {flip['flip_average']:.3f}, paired gain {g['difference']:+.3f} "
            f"[{g['low']:+.3f}, {g['high']:+.3f}]; rule: {flip['rule']}",
        ]
    out += _balance_markdown((ev or {}).get("balance"))
    views = (ev or {}).get("views")
    if views:
        out += [
            "",
            f"Augmented views (train_head.feature_views), {views['folds']}-fold probes of "
            f"{views['layer']} at {views['size']} px ({views['resize']}) on the same "
            f"{views['n']} images, none {views['plain']:.3f}; rule: {views['rule']}",
            "",
            "| views | k-fold accuracy | paired gain [95%] | one-sided 90% bound | probe s | "
            "training split s (est.) |",
            "|---|---|---|---|---|---|",
        ]
        out += [
            f"| {c['views']} | {c['accuracy']:.3f} | {c['gain']['difference']:+.3f} "
            f"[{c['gain']['low']:+.3f}, {c['gain']['high']:+.3f}] | {_low90(c['gain']):+.3f} | "
            f"{c['probe_seconds']:.1f} | {c['train_seconds']:.0f} |"
            for c in views["candidates"]
        ]
    out += _refit_markdown((ev or {}).get("refit"))
    return "\n".join(out + _bases_markdown((ev or {}).get("bases"))) + "\n"


def _balance_markdown(b: dict | None) -> list[str]:
    """advice.md's lines of the class-balance probe (over IMBALANCE_RATIO only)."""
    if not b:
        return []
    g = b["gain"]
    rows = [
        f"| {name} | {b[name]['macro_f1']:.3f} | {b[name]['balanced_accuracy']:.3f} | "
        f"{b[name]['accuracy']:.3f} |"
        for name in ("none", "balanced")
    ]
    return [
        "",
        f"Class balance ({b['imbalance']:.1f}:1 in train), {b['folds']}-fold probes of "
        f"{b['layer']} at {b['size']} px ({b['resize']}) on the same {b['n']} images; paired "
        f"macro-F1 gain of balanced weights {g['difference']:+.3f} [{g['low']:+.3f}, "
        f"{g['high']:+.3f}]; rule: {b['rule']}",
        "",
        "| class weights | macro-F1 | balanced accuracy | accuracy |",
        "|---|---|---|---|",
        *rows,
    ]


# ------------------------------------------------------------------- refit on train + val

REFIT_RULE = (
    "small data whose head-only model ships (no fine-tuning, the head on plain stored "
    "features): refit a fresh head on train + val for the epochs val early stopping chose, "
    "when the k-fold learning curve says more images still help: each fold's probe trained "
    "on all its training images against a stratified share of them (train / (train + val), "
    "the refit's step), scored on the same held-out images; refit when the held-out log "
    "loss of the larger set is lower with 90% confidence (the one-sided 90% bound of the "
    "paired gain above 0) and its accuracy is not lower"
)


def refit_hits(x, y, folds: int, fraction: float, groups=None, seed: int = 0) -> dict:
    """Out-of-fold hits and log losses of advise's linear probe trained on each fold's
    training images, and on a stratified `fraction` of them, on the same folds as `probe`.

    Args:
        x: pooled features of the images.
        y: the class indices.
        folds: k, lowered to the smallest class's count (at least 2).
        fraction: the share of each fold's training images the smaller probe keeps.
        groups: each image's group (data.group_by), or None.
        seed: seeds the folds and the share drawn.

    Returns:
        {"hits", "hits_less", "loss", "loss_less"}: one value per image each.
    """
    from sklearn.base import clone
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    k = max(2, min(folds, int(np.bincount(y).min())))
    n_groups = len(set(groups.tolist())) if groups is not None else 0
    grouped = 2 <= n_groups < len(groups)
    cv = (
        StratifiedGroupKFold(min(k, n_groups), shuffle=True, random_state=seed)
        if grouped
        else StratifiedKFold(k, shuffle=True, random_state=seed)
    )
    pipe = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=500, tol=1e-3))
    rng = np.random.default_rng(seed)
    out = {key: np.zeros(len(y)) for key in ("hits", "hits_less", "loss", "loss_less")}
    for fit, held in cv.split(x, y, groups if grouped else None):
        less = np.concatenate(
            [
                rng.choice(idx, max(1, round(fraction * len(idx))), replace=False)
                for idx in (fit[y[fit] == c] for c in np.unique(y[fit]))
            ]
        )
        for rows, suffix in ((fit, ""), (less, "_less")):
            clf = clone(pipe).fit(x[rows], y[rows])
            p = np.zeros((len(held), int(y.max()) + 1))
            p[:, clf.classes_] = clf.predict_proba(x[held])
            out["hits" + suffix][held] = p.argmax(1) == y[held]
            out["loss" + suffix][held] = -np.log(np.clip(p[np.arange(len(held)), y[held]], 1e-7, 1))
    return out


def measure_refit(
    examples_dir: str,
    validation_dir: str | None,
    *,
    ev: Evidence,
    base_cfg,
    size: int,
    cut_at: str | None,
    geometry,
    store_root: str,
    folds: int,
    max_probe_images: int,
) -> dict:
    """The k-fold learning curve at the refit's step, on the probe sample at the run's size,
    layer and geometry (features from the store: the geometry probe computed them)."""
    from graft.components.stats import paired_difference

    t0 = time.time()
    shas, y, groups, _ = _probe_sample(examples_dir, validation_dir, max_probe_images)
    base, layer, extractor = _probe_extractor(base_cfg, size, cut_at)
    x = _sample_features(
        examples_dir, validation_dir, shas, base=base, layer=layer, extractor=extractor,
        size=size, store_root=store_root, geometry=geometry, stage="advise: refit probe",
    ).x[layer]  # fmt: skip
    fraction = ev.n_train / max(1, ev.n_train + ev.n_val)
    got = refit_hits(x, y, folds, fraction, groups)
    acc = paired_difference(got["hits"], got["hits_less"])
    loss = paired_difference(got["loss_less"], got["loss"])  # > 0: more images, lower loss
    loss["low90"] = paired_difference(got["loss_less"], got["loss"], level=0.80)["low"]
    log(
        f"advise: refit probe at {size}px ({layer}, {geometry.resize}): {fraction:.0%} of each "
        f"fold's images {got['hits_less'].mean():.3f}, all {got['hits'].mean():.3f} (paired "
        f"{acc['difference']:+.3f} [{acc['low']:+.3f}, {acc['high']:+.3f}]); log loss "
        f"{got['loss_less'].mean():.3f} -> {got['loss'].mean():.3f} (gain "
        f"{loss['difference']:+.3f}, 90% bound {loss['low90']:+.3f})"
    )
    return {
        "size": size,
        "layer": layer,
        "resize": geometry.resize,
        "n": len(y),
        "folds": folds,
        "n_train": ev.n_train,
        "n_val": ev.n_val,
        "fraction": round(fraction, 4),
        "accuracy": float(got["hits"].mean()),
        "accuracy_less": float(got["hits_less"].mean()),
        "accuracy_gain": acc,
        "log_loss": float(got["loss"].mean()),
        "log_loss_less": float(got["loss_less"].mean()),
        "log_loss_gain": loss,
        "rule": REFIT_RULE,
        "seconds": round(time.time() - t0, 2),
    }


def _refit_ruled_out(p: Plan, keep: dict[str, Any], small: bool) -> str | None:
    """Why no refit can be planned whatever the probe says, or None."""
    if not small:
        return "large data: fine-tuning is planned or the val split adds few images"
    if keep.get("fine_tune.enabled") is True or p.overrides.get("fine_tune.enabled") is not False:
        return "fine-tuning runs, and its guard decides on val: the refit is for a head-only model"
    if keep.get("train_head.augment") is True or keep.get("train_head.feature_cache") == "off":
        return (
            "your train_head.augment or feature_cache settings train the head on images; a "
            "refit trains on stored features"
        )
    views = keep.get("train_head.feature_views", p.overrides.get("train_head.feature_views"))
    if views:
        return (
            f"the head trains on {views} augmented views per image (train_head.feature_views); "
            "a refit on train + val would train on plain features without them"
        )
    return None


def plan_refit(p: Plan, refit: dict | None, why_not: str | None = None) -> None:
    """train_head.refit from the refit probe: always only when more images still help beyond
    the noise (REFIT_RULE), never otherwise or when `why_not` rules it out. Pure.

    Args:
        p: the plan, changed in place.
        refit: measure_refit's evidence, or None when it did not run.
        why_not: why no refit can be planned whatever the evidence, or None.
    """
    if refit is None or why_not:
        p.overrides["train_head.refit"] = "never"
        p.decisions.append(Decision("refit", "no", why_not or "no refit probe ran"))
        return
    acc, loss = refit["accuracy_gain"], refit["log_loss_gain"]
    on = loss["low90"] > 0 and acc["difference"] >= 0
    p.overrides["train_head.refit"] = "always" if on else "never"
    p.decisions.append(
        Decision(
            "refit",
            f"yes: head on train + val ({refit['n_train'] + refit['n_val']} images)"
            if on
            else "no",
            f"{refit['folds']}-fold probes on {refit['n']} training images, each fold's "
            f"classifier on all its images vs {refit['fraction']:.0%} of them (train / "
            f"(train + val)): accuracy {refit['accuracy_less']:.3f} -> {refit['accuracy']:.3f} "
            f"(paired {acc['difference']:+.3f} [{acc['low']:+.3f}, {acc['high']:+.3f}]), log "
            f"loss {refit['log_loss_less']:.3f} -> {refit['log_loss']:.3f} (gain "
            f"{loss['difference']:+.3f}, one-sided 90% bound {loss['low90']:+.3f}): "
            + (
                "more images still help, so the head shipped is refit on train + val for the "
                "epochs val early stopping chose"
                if on
                else "more images do not help beyond the noise, so the head trained on train "
                "and early-stopped on val ships"
            ),
        )
    )


def _probe_refit(
    p: Plan, ev: Evidence, examples_dir, validation_dir, *, base_cfg, image_size, keep,
    geometry, store_root, folds, max_probe_images, seed, small_data,
):  # fmt: skip
    """The refit decision: the learning-curve probe at the run's point when a refit could
    ship (small data, no fine-tuning, the head on stored features), then its plan."""
    tunes = keep.get("fine_tune.enabled", p.overrides.get("fine_tune.enabled")) is True
    if keep.get("train_head.refit") == "always" and tunes:
        raise ValueError(
            "train_head.refit: always (your setting) refits the head-only model, but fine-tuning "
            f"runs on this data ({ev.n_train} training images); set fine_tune.enabled=false too, "
            "or train_head.refit=auto"
        )
    why_not = _refit_ruled_out(p, keep, ev.n_train < small_data)
    if why_not is None and ev.n_val:
        size, cut = _probe_point(p, keep, image_size, base_cfg.cut_at)
        _seed(seed)
        ev.refit = measure_refit(
            examples_dir, validation_dir, ev=ev, base_cfg=base_cfg, size=size, cut_at=cut,
            geometry=_run_geometry(p, keep, geometry), store_root=store_root, folds=folds,
            max_probe_images=max_probe_images,
        )  # fmt: skip
    elif why_not is None:
        why_not = "no val images: nothing to add"
    plan_refit(p, ev.refit, why_not)


def _refit_markdown(refit: dict | None) -> list[str]:
    """advice.md's paragraph on the refit probe; none when it did not run."""
    if not refit:
        return []
    acc, loss = refit["accuracy_gain"], refit["log_loss_gain"]
    return [
        "",
        f"Refit on train + val, {refit['folds']}-fold probes of {refit['layer']} at "
        f"{refit['size']} px ({refit['resize']}) on {refit['n']} images, each fold's classifier "
        f"on all its images vs {refit['fraction']:.0%}: accuracy {refit['accuracy_less']:.3f} "
        f"-> {refit['accuracy']:.3f} (paired {acc['difference']:+.3f} [{acc['low']:+.3f}, "
        f"{acc['high']:+.3f}]), log loss {refit['log_loss_less']:.3f} -> {refit['log_loss']:.3f} "
        f"(gain {loss['difference']:+.3f}, one-sided 90% bound {loss['low90']:+.3f}); rule: "
        f"{refit['rule']}",
    ]


# ------------------------------------------------------------------- backbone choice

BASE_MARGIN = 0.01  # how much accuracy a cheaper base may cost: one point, at 95%
BASE_RULE = (
    "the configured base, unless another base probes better beyond the noise (the paired 95% "
    "interval of its gain over the configured base above 0; the cheapest such), or costs less "
    "(fewest FLOPs per image at its probe size, counted from its convolution and dense layers; "
    "measured seconds per image where a FLOP count is missing) and is not worse by more than "
    f"{BASE_MARGIN:g} (the interval's lower end above -{BASE_MARGIN:g}: non-inferior; the "
    "cheapest such)"
)


class WeightsUnavailable(Exception):
    """A listed base's weights are not here (a missing file, ImageNet not in keras' cache)."""


def base_label(name: str, weights: str | None, kwargs: dict) -> str:
    """A base as one short string: name (weights, kwargs), e.g. mobilenet (x.h5, alpha=0.25)."""
    w = "random init" if weights is None else os.path.basename(str(weights))
    extra = "".join(f", {k}={v}" for k, v in sorted(kwargs.items()))
    return f"{name} ({w}{extra})"


def _cost(b: dict) -> float:
    """A probed base's forward cost: FLOPs per image, else seconds per image."""
    return b["flops"] if b.get("flops") else 1.0 / max(b["images_per_s"], 1e-9)


def choose_base(bases: dict) -> tuple[dict, Decision]:
    """BASE_RULE applied to measure_bases' evidence. Pure: the chosen entry and the decision.

    Each probed entry carries `gain` (the paired interval of its accuracy minus the configured
    base's, on the same images and folds; None for the configured one) and its cost (`flops`,
    `images_per_s`); `behind_best` is evidence for the reader.

    Args:
        bases: measure_bases' evidence; its "candidates" are the probed entries.

    Returns:
        (the chosen entry, the base Decision with its reason).
    """
    probed = [b for b in bases["candidates"] if not b.get("skipped")]
    configured = next(b for b in probed if b["configured"])
    others = [b for b in probed if not b["configured"]]
    use_flops = all(b.get("flops") for b in probed)
    key = (lambda b: b["flops"]) if use_flops else (lambda b: 1.0 / max(b["images_per_s"], 1e-9))
    better = [b for b in others if b["gain"]["low"] > 0]
    cheaper = [b for b in others if key(b) < key(configured) and b["gain"]["low"] > -BASE_MARGIN]
    chosen = min(better or cheaper or [configured], key=key)
    parts = []
    for b in bases["candidates"]:
        if b.get("skipped"):
            parts.append(f"{b['label']} skipped ({b['skipped']})")
            continue
        g = b["gain"]
        parts.append(
            f"{b['label']} {b['accuracy']:.3f} [{b['low']:.3f}, {b['high']:.3f}], "
            + (f"{b['flops'] / 1e6:.0f} MFLOPs, " if b.get("flops") else "")
            + f"{b['images_per_s']:.0f} img/s"
            + (
                " (configured)"
                if b["configured"]
                else f", gain over the configured {g['difference']:+.3f} "
                f"[{g['low']:+.3f}, {g['high']:+.3f}]"
            )
        )
    if chosen is configured:
        verdict = (
            "no other base probes better beyond the noise, nor costs less without possibly "
            f"losing more than {BASE_MARGIN:g}: the configured base"
        )
    elif better:
        verdict = f"{chosen['label']} probes better than the configured base beyond the noise"
    else:
        verdict = (
            f"{chosen['label']} costs less than the configured base and loses at most "
            f"{BASE_MARGIN:g} (95%)"
        )
    reason = (
        f"{bases['folds']}-fold probes of each base's last layer ({bases['resize']}) on the same "
        f"{bases['n']} training images: " + "; ".join(parts) + f": {verdict}"
    )
    return chosen, Decision("base", chosen["label"], reason)


@contextmanager
def _no_downloads():
    """keras.applications' weight fetches find keras' cache or raise WeightsUnavailable: a
    listed base is probed with weights that are here, never downloaded. (keras has no
    offline switch; its applications all fetch through file_utils.get_file.)"""
    from keras.src.utils import file_utils

    fetch = file_utils.get_file

    def cached_only(fname=None, origin=None, *args, cache_subdir="datasets", **kw):
        name = fname or os.path.basename(str(origin))
        homes = [kw.get("cache_dir") or file_utils.config.keras_home(), "/tmp/.keras"]
        paths = [os.path.join(os.path.expanduser(h), cache_subdir, name) for h in homes]
        if not any(os.path.exists(p) for p in paths):
            raise WeightsUnavailable(f"ImageNet weights {name} not in keras' cache ({paths[0]})")
        return fetch(fname, origin, *args, cache_subdir=cache_subdir, **kw)

    file_utils.get_file = cached_only
    try:
        yield
    finally:
        file_utils.get_file = fetch


def _build_listed_base(entry, size: int):
    """The base of an advise.bases entry at `size`, or WeightsUnavailable with the reason."""
    from graft.components import model as gmodel
    from graft.core.config import BaseConfig

    w = entry.weights
    if w not in (None, "demo", "imagenet") and not os.path.exists(w):
        raise WeightsUnavailable(f"weights file not found: {w}")
    cfg = BaseConfig(name=entry.name, weights=w, kwargs=dict(entry.kwargs))
    try:
        with _no_downloads():
            return gmodel.build_base(cfg, size)
    except Exception as e:  # build_base wraps keras' failure to fetch
        cause = e if isinstance(e, WeightsUnavailable) else e.__cause__
        if isinstance(cause, WeightsUnavailable):
            raise cause from e
        raise


def _flops(model) -> int:
    """Floating-point operations of one image's forward pass: 2 x the multiply-adds of the
    convolution and dense layers (batch norm, activations and adds are a few percent more),
    from the layers' shapes; deterministic, unlike a timing on a busy machine."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D | keras.layers.DepthwiseConv2D):
            out = layer.output.shape  # (batch, h, w, c)
            # every kernel weight is used once per output pixel: (kh, kw, c_in, c_out) for a
            # convolution, (kh, kw, c, multiplier) for a depthwise one
            total += 2 * out[1] * out[2] * math.prod(layer.kernel.shape)
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * math.prod(layer.kernel.shape)
    return int(total)


def _candidates(base_cfg, listed, image_size: int, size_kept: bool) -> list[dict]:
    """The configured base first, then each listed one not equal to it, with its probe size:
    data.image_size when you set it, else the base's own default input size."""
    from graft.core.backbones import BACKBONES

    out = []
    seen = set()
    for entry, configured in [(base_cfg, True)] + [(e, False) for e in listed]:
        key = (entry.name, entry.weights, json.dumps(entry.kwargs, sort_keys=True))
        if key in seen:
            continue
        seen.add(key)
        size = image_size if size_kept else BACKBONES[entry.name].default_size
        out.append({"entry": entry, "configured": configured, "size": size})
    return out


def measure_bases(
    examples_dir: str,
    validation_dir: str | None,
    *,
    base_cfg,
    bases: list,
    image_size: int,
    size_kept: bool,
    store_root: str,
    folds: int,
    max_probe_images: int,
    seed: int = 0,
) -> dict:
    """Linear probes of the last layer of the configured base and of each listed base whose
    weights are here, on the probe sample with the same folds; each one's Wilson interval,
    paired gain over the configured base and paired gap behind the best, and forward cost
    (FLOPs, parameters, images/s here). Features go through the store under each base's
    fingerprint, so the chosen base's later steps reuse them."""
    from graft.components.stats import paired_difference

    t0 = time.time()
    sample = _probe_sample(examples_dir, validation_dir, max_probe_images)[:3]
    rows, hits_of = [], {}
    for c in _candidates(base_cfg, bases, image_size, size_kept):
        e = c["entry"]
        row = {
            "label": base_label(e.name, e.weights, e.kwargs),
            "name": e.name,
            "weights": e.weights,
            "kwargs": dict(e.kwargs),
            "configured": c["configured"],
            "size": c["size"],
        }
        rows.append(row)
        hits = _probe_base(
            examples_dir,
            validation_dir,
            c,
            row,
            sample,
            store_root=store_root,
            folds=folds,
            seed=seed,
        )
        if hits is not None:
            hits_of[row["label"]] = hits
    probed = [r for r in rows if not r.get("skipped")]
    mine = hits_of[rows[0]["label"]]
    best = max(probed, key=lambda r: (r["accuracy"], r["configured"]))
    for r in probed:
        r["gain"] = None if r["configured"] else paired_difference(hits_of[r["label"]], mine)
        r["behind_best"] = paired_difference(hits_of[best["label"]], hits_of[r["label"]])
    return {
        "n": len(sample[1]),
        "folds": folds,
        "resize": "squash",
        "rule": BASE_RULE,
        "candidates": rows,
        "seconds": round(time.time() - t0, 2),
    }


def _probe_base(
    examples_dir, validation_dir, c: dict, row: dict, sample, *, store_root, folds, seed
):
    """One base's k-fold hits on the probe sample (its measures into `row`), or None with
    `row["skipped"]` saying why its weights are not here."""
    import keras

    from graft.components import data as gdata
    from graft.components import features as gfeat
    from graft.components.model import BackbonePreprocess
    from graft.components.stats import wilson

    shas, y, groups = sample
    t1 = time.time()
    keras.backend.clear_session()
    _seed(seed)
    try:
        base = (
            _build_configured(c["entry"], c["size"])
            if c["configured"]
            else _build_listed_base(c["entry"], c["size"])
        )
    except WeightsUnavailable as why:
        row["skipped"] = f"{why}; advise never downloads"
        log(f"advise: base {row['label']} skipped: {row['skipped']}")
        return None
    layer = base.layers[-1].name
    extractor = gfeat.pooled_extractor(base, BackbonePreprocess(c["entry"].name), [layer])
    feats = _sample_features(
        examples_dir, validation_dir, shas, base=base, layer=layer, extractor=extractor,
        size=c["size"], store_root=store_root, geometry=gdata.SQUASH,
        stage=f"advise: base {row['label']}",
    )  # fmt: skip
    hits = probe(feats.x[layer], y, folds, groups=groups)
    lo, hi = wilson(int(hits.sum()), len(hits))
    row.update(
        layer=layer,
        dim=int(feats.x[layer].shape[1]),
        accuracy=float(hits.mean()),
        low=lo,
        high=hi,
        computed=feats.computed,
        images_per_s=round(_speed(extractor, c["size"]), 1),
        params=int(base.count_params()),
        flops=_flops(base),
        seconds=round(time.time() - t1, 2),
    )
    log(
        f"advise: base {row['label']} at {c['size']}px: {row['accuracy']:.3f} [{lo:.3f}, "
        f"{hi:.3f}], {row['images_per_s']:.0f} img/s, {row['params']:,} parameters, "
        f"{row['flops'] / 1e6:.0f} MFLOPs"
    )
    return hits


def _build_configured(base_cfg, size: int):
    """The configured base, whole (its probe reads the last layer)."""
    from graft.components import model as gmodel

    return gmodel.build_base(base_cfg.model_copy(update={"cut_at": None}), size)


def _chosen_base_cfg(base_cfg, chosen: dict, kept: bool):
    """The base measure and the later steps use: the chosen one, unless you kept `base.*`."""
    if kept or chosen["configured"]:
        return base_cfg
    return base_cfg.model_copy(
        update={
            "name": chosen["name"],
            "weights": chosen["weights"],
            "kwargs": dict(chosen["kwargs"]),
            "cut_at": None,
        }
    )


def plan_base(p: Plan, chosen: dict, decision: Decision, kept: dict) -> dict:
    """The base choice into the plan: base.name/weights/kwargs (first decision line), or, with
    your base.* kept, a kept line saying what advise would have chosen. Pure; returns the
    kept entry ({} when nothing of yours was overridden).

    Args:
        p: the plan, changed in place.
        chosen: choose_base's chosen entry.
        decision: choose_base's decision.
        kept: the user's base.* settings (dotted key -> value), which the plan keeps.

    Returns:
        {"base": {"yours", "advise"}} when your base was kept over advise's choice, else {}.
    """
    p.decisions.insert(0, decision)
    if chosen["configured"]:
        return {}
    choice = {
        "base.name": chosen["name"],
        "base.weights": chosen["weights"],
        "base.kwargs": dict(chosen["kwargs"]),
    }
    if not kept:
        p.overrides.update(choice)
        return {}
    shown = ", ".join(f"{k}={v}" for k, v in kept.items())
    p.decisions.append(
        Decision(
            "kept",
            shown,
            f"kept your base ({shown}); advise would choose {chosen['label']}, so every later "
            "decision is your base's",
        )
    )
    return {"base": {"yours": kept, "advise": choice}}


def _bases_markdown(bases: dict | None) -> list[str]:
    """advice.md's table of the backbone probes (advise.bases)."""
    if not bases:
        return []
    out = [
        "",
        f"Backbone (advise.bases), {bases['folds']}-fold probes of each base's last layer "
        f"({bases['resize']}) on the same {bases['n']} images; rule: {bases['rule']}. Chosen: "
        f"{bases.get('chosen')}"
        + (" (not used: your base.* is kept)" if bases.get("kept") else ""),
        "",
        "| base | px | k-fold accuracy [95%] | paired gain over the configured [95%] | "
        "best minus it [95%] | images/s | MFLOPs | parameters |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for b in bases["candidates"]:
        if b.get("skipped"):
            out.append(f"| {b['label']} | {b['size']} | skipped: {b['skipped']} | | | | | |")
            continue
        g, w = b.get("gain"), b["behind_best"]
        gain = f"{g['difference']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}]" if g else "configured"
        flops = f"{b['flops'] / 1e6:.0f}" if b.get("flops") else "-"
        out.append(
            f"| {b['label']} | {b['size']} | {b['accuracy']:.3f} [{b['low']:.3f}, "
            f"{b['high']:.3f}] | {gain} | {w['difference']:+.3f} [{w['low']:+.3f}, "
            f"{w['high']:+.3f}] | {b['images_per_s']:.0f} | {flops} | {b['params']:,} |"
        )
    return out
