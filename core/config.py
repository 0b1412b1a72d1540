"""The one typed config for a Graft run.

Loaded from YAML, overridden with dotted ``--set key=value`` pairs, and validated in full
before any work starts, so a typo in a key costs seconds, not a training run.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from graft.core.backbones import BACKBONES

__all__ = [
    "RUN_RECORD",
    "leaf_keys",
    "AdviseConfig",
    "AugmentConfig",
    "BaseChoice",
    "BaseConfig",
    "ConfigError",
    "DataConfig",
    "DriftConfig",
    "EvaluateConfig",
    "ExportConfig",
    "FeaturesConfig",
    "FineTuneConfig",
    "GpuConfig",
    "GraftConfig",
    "HeadConfig",
    "KubeflowConfig",
    "PushConfig",
    "RunnerConfig",
    "Section",
    "Splits",
    "StepResources",
    "TrainConfig",
    "TrainHeadConfig",
    "UnfreezeConfig",
    "ValidateConfig",
    "apply_overrides",
    "dump_yaml",
    "kept_by",
    "load_config",
    "parse_config",
    "with_absolute_paths",
    "with_values",
]


# Upper bounds for counts: a typo (epochs: 10000000) fails in validation, not after a day.
MAX_EPOCHS = 1000
MAX_BATCH = 65_536


class ConfigError(ValueError):
    """A config problem, with the dotted key path in the message."""


class Section(BaseModel):
    """A config section: strict (no coercion), unknown keys refused, did-you-mean errors."""

    # strict: `epochs: true` or `epochs: '5'` is refused, never coerced (an int field takes
    # ints, a float field ints and floats, a bool field true/false)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


class Splits(Section):
    """Fractions of the hash-split; must sum to 1."""

    train: float = Field(0.7, gt=0, lt=1)
    val: float = Field(0.15, gt=0, lt=1)
    test: float = Field(0.15, gt=0, lt=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> Splits:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1, got {total:.4f}")
        return self


class DataConfig(Section):
    """Where the images come from and how they are stored."""

    source: Literal["folder", "tfds", "csv"] = "folder"
    path: str | None = Field(None, description="image folder root or CSV manifest path")
    tfds_name: str | None = None
    tfds_data_dir: str | None = None
    tfds_download: bool = False
    tfds_splits: dict[str, str] = Field(
        default_factory=dict,
        description="map TFDS split -> graft split (train/val/test/auto); empty: all splits "
        "hash-split",
    )
    splits: Splits = Field(default_factory=Splits)
    image_size: int = Field(224, ge=32, le=1024, description="square training/serving input side")
    resize: Literal["squash", "crop", "pad"] = Field(
        "squash",
        description="how an image becomes the image_size square, in training, evaluation, the "
        "feature store and the exported model alike: squash (the whole image, aspect ratio not "
        "kept), crop (shorter side to image_size / crop_fraction, then the centre square: "
        "ImageNet's evaluation transform), pad (the whole image, aspect kept, letterboxed with "
        "the ImageNet mean colour); recipe auto probes the three",
    )
    crop_fraction: float = Field(
        0.875,
        ge=0.5,
        le=1,
        description="resize: crop keeps this fraction of the shorter side (0.875: 224 of 256)",
    )
    max_side: int = Field(1024, ge=32, le=16384, description="larger stored images are downscaled")
    shards: int = Field(2, ge=1, le=1024, description="TFRecord shards per split")
    beam_args: list[str] = Field(default_factory=list)
    num_workers: int = Field(
        0,
        ge=0,
        le=1024,
        description="DirectRunner workers; 0 = all cores for inputs over 64 MB, else one "
        "in-memory worker",
    )
    progress_every: int = Field(200, ge=1, le=10_000_000)
    max_file_bytes: int = Field(
        50 * 2**20,
        ge=1,
        le=2**32,
        description="larger files are quarantined without being read",
    )
    max_pixels: int = Field(
        50_000_000,
        ge=1,
        le=2**32,
        description="images with more pixels (width x height, read from the header) are "
        "quarantined without being decoded",
    )
    max_csv_bytes: int = Field(
        256 * 2**20,
        ge=1,
        le=2**40,
        description="a larger CSV manifest (data.source: csv) is refused; it is streamed, "
        "never read whole",
    )
    group_by: str | None = Field(
        None,
        description="keep each group in one split: a CSV column name (e.g. patient), or a regex "
        "with one capture group applied to the file name (e.g. '^(\\w+)_')",
    )
    incremental: bool = Field(
        True,
        description="reuse the newest earlier ingest of the same source for unchanged files "
        "(path, size, mtime, confirmed by sha256); decode only new and changed ones",
    )

    @model_validator(mode="after")
    def _source_needs(self) -> DataConfig:
        if self.source in ("folder", "csv") and not self.path:
            raise ValueError(f"data.path is required when data.source is '{self.source}'")
        if self.source == "tfds" and not self.tfds_name:
            raise ValueError("data.tfds_name is required when data.source is 'tfds'")
        if self.group_by is not None and self.source == "tfds":  # its examples have no names
            raise ValueError(
                "data.group_by is not supported with data.source 'tfds' (its examples carry no "
                "file names or group column to group by); use a folder or CSV source"
            )
        if self.group_by is not None:
            try:
                groups = re.compile(self.group_by).groups
            except re.error as e:
                raise ValueError(f"data.group_by is not a valid regex: {e}") from None
            if groups > 1:
                raise ValueError(
                    f"data.group_by regex '{self.group_by}' has {groups} capture groups; use one"
                )
            if groups == 0 and self.source != "csv":
                raise ValueError(
                    f"data.group_by '{self.group_by}' has no capture group, so it names a CSV "
                    f"column, but data.source is '{self.source}'; for file names use a regex "
                    "with one capture group, e.g. '^([^_]+)_'"
                )
        bad = {v for v in self.tfds_splits.values()} - {"train", "val", "test", "auto"}
        if bad:
            raise ValueError(
                f"data.tfds_splits values must be train/val/test/auto, got {sorted(bad)}"
            )
        return self


class ValidateConfig(Section):
    """Blocking data checks before any training."""

    min_classes: int = Field(2, ge=2, le=100_000)
    min_per_class: dict[str, Annotated[int, Field(ge=0, le=10_000_000)]] = Field(
        default_factory=lambda: {"train": 5, "val": 1, "test": 1},
        description="minimum images per class in each split",
    )
    max_corrupt_rate: float = Field(0.05, ge=0, le=1)
    leakage: Literal["error", "drop_from_eval"] = "error"
    label_conflicts: Literal["error", "drop"] = Field(
        "error",
        description="the same image under two classes: stop, or drop it everywhere (reported)",
    )
    imbalance_warn_ratio: float = Field(3.0, ge=1, le=1_000_000)
    near_duplicates: Literal["warn", "error", "drop_from_eval", "off"] = Field(
        "warn",
        description="near-identical images (perceptual hash) across splits: warn, stop, or "
        "drop their val/test copies from evaluation",
    )
    near_duplicate_bits: int = Field(
        10, ge=0, le=32, description="difference-hash Hamming distance (of 64 bits) that counts"
    )
    near_duplicate_colour: float = Field(
        3.0,
        ge=0,
        le=255,
        description="and mean absolute difference of 4x4 block colours (0-255) that counts",
    )
    small_split_warn: int = Field(
        20,
        ge=0,
        le=10_000_000,
        description="warn when a class has fewer images than this in val or test",
    )


class BaseConfig(Section):
    """The pretrained backbone."""

    name: str = "mobilenet_v2"
    weights: str | None = Field(
        "imagenet",
        description="'imagenet' (Keras' file in $KERAS_HOME/models), 'demo' (the small synthetic "
        "base shipped with Graft: demos and tests only, useless for photos), a weights file, "
        "or null (random init)",
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="e.g. {alpha: 0.35}")
    cut_at: str | None = Field(
        None,
        description="layer of the base whose output the head reads (an earlier block's "
        "features); null: the base's last layer",
    )

    @field_validator("name")
    @classmethod
    def _known_name(cls, v: str) -> str:
        if v not in BACKBONES:
            raise ValueError(f"unknown backbone '{v}'; valid: {', '.join(sorted(BACKBONES))}")
        return v


class BaseChoice(Section):
    """A base advise may choose instead of `base` (advise.bases): named as `base` names it."""

    name: str
    weights: str | None = Field(
        "imagenet", description="as base.weights; a missing file is skipped, never downloaded"
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="e.g. {alpha: 0.25}")

    @field_validator("name")
    @classmethod
    def _known_name(cls, v: str) -> str:
        return BaseConfig._known_name(v)


class HeadConfig(Section):
    """head: the classifier grafted onto the base (dropout, an optional hidden layer)."""

    dropout: float = Field(0.2, ge=0, lt=1)
    fc_size: int = Field(0, ge=0, le=16384, description="0: no hidden Dense layer")
    normalize: bool = Field(
        False, description="standardise pooled features per channel (fitted on the train split)"
    )
    taps: list[str] = Field(
        default_factory=list,
        description="earlier layers of the base whose pooled features the head reads beside the "
        "base's output (a multi-depth head; pair with normalize); []: the output only",
    )


class AugmentConfig(Section):
    """Keras preprocessing layers; 0 disables each one."""

    flip: Literal["none", "horizontal", "vertical", "horizontal_and_vertical"] = "horizontal"
    rotation: float = Field(0.05, ge=0, le=1)
    zoom: float = Field(0.1, ge=0, lt=1)
    contrast: float = Field(0.1, ge=0, le=1)
    translation: float = Field(0.1, ge=0, lt=1)

    @property
    def active(self) -> bool:
        return self.flip != "none" or any(
            v > 0 for v in (self.rotation, self.zoom, self.contrast, self.translation)
        )


class TrainConfig(Section):
    """Settings shared by both training stages."""

    seed: int = 0
    mixed_precision: bool = False
    jit_compile: bool = False
    strategy: Literal["auto", "default", "mirrored", "multi_worker"] = "auto"
    deterministic: bool = Field(
        False,
        description="bit-identical re-runs over the same images (any ingest of them) on the "
        "same machine and TF build: reads in sha256 order, sequential augmentation, TF op "
        "determinism; slower",
    )
    budget_minutes: float = Field(
        15.0,
        gt=0,
        le=100_000,
        description="recipe auto: wall-time budget of advise's probes and both training "
        "stages; sets the fine-tuning epochs",
    )


class TrainHeadConfig(Section):
    """train_head: training the new head with the base frozen."""

    epochs: int = Field(10, ge=1, le=MAX_EPOCHS)
    batch_size: int = Field(32, ge=1, le=MAX_BATCH)
    optimizer: Literal["adam", "sgd", "rmsprop", "adamw"] = "adam"
    learning_rate: float = Field(1e-3, gt=0, le=10)
    patience: int = Field(
        3, ge=0, le=MAX_EPOCHS, description="early stopping on val_loss; 0 disables"
    )
    class_weight: Literal["auto", "balanced", "none"] = Field(
        "auto",
        description="how both training stages weigh the classes: balanced, n / (C x n_c) per "
        "class (where the counts differ); none, each image alike; auto, recipe auto's choice "
        "(over 3:1 imbalance a k-fold macro-F1 probe picks balanced or none), else balanced",
    )
    feature_cache: Literal["auto", "on", "off"] = "auto"
    augment: bool = Field(False, description="augment during the head stage")
    augmented_passes: int = Field(
        0,
        ge=0,
        le=100,
        description="with augment and cache: precompute this many augmented passes",
    )
    feature_views: int = Field(
        0,
        ge=0,
        le=16,
        description="with cached features (augment false): the head trains on each training "
        "image and this many augmented views of it (crop, flip, colour), each computed once "
        "and kept in the feature store; val and test stay plain. 0: none",
    )
    refit: Literal["auto", "never", "always"] = Field(
        "auto",
        description="ship a head refit on train + val for the epochs val early stopping chose "
        "(head-only model, no fine-tuning, plain stored features); auto: under recipe auto "
        "advise decides from a k-fold learning-curve probe, otherwise never",
    )

    @model_validator(mode="after")
    def _views_need_the_store(self) -> TrainHeadConfig:
        if self.feature_views and (self.augment or self.feature_cache == "off"):
            raise ValueError(
                "train_head.feature_views needs cached features: train_head.augment=false "
                "and train_head.feature_cache auto or on"
            )
        return self

    @model_validator(mode="after")
    def _refit_needs_plain_features(self) -> TrainHeadConfig:
        if self.refit == "always" and (self.augment or self.feature_cache == "off"):
            raise ValueError(
                "train_head.refit: always refits the head on the stored plain features of "
                "train + val; it needs train_head.augment: false and train_head.feature_cache "
                "auto or on"
            )
        if self.refit == "always" and self.feature_views:
            raise ValueError(
                f"train_head.refit: always refits the head on plain train + val features, "
                f"without the {self.feature_views} augmented views per image "
                "(train_head.feature_views) the head trained on: set one of them off"
            )
        return self


class UnfreezeConfig(Section):
    """fine_tune.unfreeze: how much of the base fine-tuning trains."""

    mode: Literal["from_layer", "top_fraction", "all"] = "all"
    from_layer: str | None = None
    top_fraction: float = Field(0.3, gt=0, le=1)
    gradual_epochs: int = Field(
        0,
        ge=0,
        le=MAX_EPOCHS,
        description="gradual unfreezing: each earlier stage of the unfrozen part joins this "
        "many epochs after the stage above it (the top stage and the head start at once); "
        "0: all at once",
    )

    @model_validator(mode="after")
    def _needs_layer(self) -> UnfreezeConfig:
        if self.mode == "from_layer" and not self.from_layer:
            raise ValueError("fine_tune.unfreeze.from_layer is required when mode is 'from_layer'")
        return self


class FineTuneConfig(Section):
    """fine_tune: training the unfrozen base gently, kept only if it beats the head."""

    enabled: bool = True
    unfreeze: UnfreezeConfig = Field(default_factory=UnfreezeConfig)
    epochs: int = Field(5, ge=1, le=MAX_EPOCHS)
    batch_size: int = Field(32, ge=1, le=MAX_BATCH)
    optimizer: Literal["adam", "sgd", "rmsprop", "adamw"] = "adam"
    learning_rate: float = Field(1e-4, gt=0, le=10)
    lr_find: bool = Field(
        False,
        description="pick the rate by an LR range test on the unfrozen model (lr_find_steps "
        "batches at a rate rising from 1e-7 to 0.1, weights put back after): a third of the "
        "rate where the loss starts to rise, kept within 0.1x..10x learning_rate",
    )
    lr_find_steps: int = Field(
        60, ge=20, le=1000, description="the range test's batches, at most an epoch's"
    )
    lr_find_repeats: int = Field(
        3,
        ge=1,
        le=10,
        description="runs of the range test, each from the same weights on fresh batches; the "
        "rate is picked on the median of their losses at each rate (one run's pick ranged "
        "8.9e-5..7.6e-3 over 8 runs on chest_xray)",
    )
    layer_lr_decay: float = Field(
        1.0,
        gt=0,
        le=1,
        description="discriminative rates: each earlier stage (feature-map size) of the base "
        "trains at this fraction of the next stage's rate; 1: one rate for all",
    )
    momentum: float = Field(0.9, ge=0, lt=1)
    cosine_decay: bool = True
    warmup_epochs: float = Field(0.0, ge=0, le=MAX_EPOCHS)
    patience: int = Field(3, ge=0, le=MAX_EPOCHS)
    augment: bool = True
    guard: bool = Field(True, description="keep the head-only weights if fine-tuning hurts val")
    max_minutes: float = Field(
        0.0,
        ge=0,
        le=100_000,
        description="stop after the epoch that would pass this (result.json: extra.time_budget); "
        "on one process a cosine decay is planned over the epochs the LR range test's timed "
        "batches say fit, re-planned to end at the last epoch that fits, and a resumed stage "
        "keeps the seconds already spent and the plans; 0: none",
    )
    guard_rule: Literal["better", "beyond_noise"] = Field(
        "better",
        description="better: keep fine-tuning if val accuracy is higher; beyond_noise: only "
        "if the paired gain's one-sided guard_level bound is above 0",
    )
    guard_level: float = Field(
        0.9,
        ge=0.5,
        lt=1,
        description="beyond_noise: the one-sided confidence that fine-tuning gains (advise's "
        "bar for its other choices); 0.975 is the paired 95% interval's low end",
    )
    guard_folds: int = Field(
        5,
        ge=0,
        le=20,
        description="beyond_noise below guard_cv_below training images: the head and the "
        "fine-tuning are re-run on this many folds of the train split and the interval rests "
        "on every training image scored out of fold plus val; 0: val only",
    )
    guard_cv_below: int = Field(
        1000, ge=0, le=10**9, description="training images under which guard_folds applies"
    )

    @property
    def staged(self) -> bool:
        """Per-stage rates or gradual unfreezing: the layerwise optimizer and its callback."""
        return self.layer_lr_decay < 1 or self.unfreeze.gradual_epochs > 0

    @model_validator(mode="after")
    def _folds_are_two_or_more(self) -> FineTuneConfig:
        if self.guard_folds == 1:
            raise ValueError("fine_tune.guard_folds must be 0 (val only) or at least 2")
        return self

    @model_validator(mode="after")
    def _stages_need_plain_decay(self) -> FineTuneConfig:
        if self.staged and self.optimizer == "adamw":
            raise ValueError(
                "fine_tune.optimizer 'adamw' cannot be combined with fine_tune.layer_lr_decay "
                "< 1 or fine_tune.unfreeze.gradual_epochs > 0: its weight decay would ignore "
                "the per-stage rates (a waiting stage would still shrink); use adam"
            )
        return self


class AdviseConfig(Section):
    """How `recipe: auto` measures the data and the base before it plans (the advise step)."""

    folds: int = Field(5, ge=2, le=20, description="k-fold cross-validation of each probe")
    max_probe_images: int = Field(
        2000, ge=50, le=1_000_000, description="training images the probes use at most"
    )
    small_data: int = Field(
        1000,
        ge=0,
        le=10_000_000,
        description="below this many training images the data counts as small",
    )
    keep: list[str] = Field(
        default_factory=list,
        description="dotted keys advise never changes: your settings. Filled with every key "
        "your config file and --set give, unless the file lists them itself",
    )
    bases: list[BaseChoice] = Field(
        default_factory=list,
        description="other bases recipe auto probes beside `base` ({name, weights, kwargs} "
        "each); it picks the cheapest whose probe is not below the best beyond the noise. "
        "Empty: the configured base, nothing probed",
    )


class FeaturesConfig(Section):
    """The feature store: pooled base features per image, shared by steps and runs."""

    store: str | None = Field(
        None,
        description="folder (or gs://...) of the store; null: <runner.run_root>/features; '' "
        "turns it off",
    )


class DriftConfig(Section):
    """Scheduled retraining: the new data against the data the served model was trained on."""

    enabled: bool = True
    action: Literal["warn", "block"] = Field(
        "warn", description="block: a flagged check fails the run, so nothing is pushed"
    )
    max_label_linf: float = Field(
        0.1, ge=0, le=1, description="label distribution L-infinity (whole snapshots)"
    )
    max_stat_js: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Jensen-Shannon divergence (base 2) of per-image statistics, new images "
        "vs the served snapshot, 10 shared buckets",
    )
    embedding_p: float = Field(
        0.001, gt=0, lt=1, description="embedding MMD permutation p-value below this flags"
    )
    max_confidence_js: float = Field(
        0.1,
        ge=0,
        le=1,
        description="JS divergence of the served model's top score, new images vs its "
        "held-out (val, test) images",
    )
    significance: float = Field(
        0.01,
        gt=0,
        lt=1,
        description="a measure over its threshold flags only if its permutation p-value is "
        "below this too: small batches differ by chance",
    )
    sample: int = Field(500, ge=20, le=1_000_000, description="images per side compared")
    permutations: int = Field(2000, ge=20, le=100_000)


class EvaluateConfig(Section):
    """evaluate: the test metrics and what it takes to bless a candidate."""

    top_k: int = Field(3, ge=1, le=1000)
    ece_bins: int = Field(10, ge=2, le=1000)
    min_accuracy: float = Field(0.0, ge=0, le=1)
    min_improvement: float = Field(0.0, ge=-1, le=1, description="vs baseline, absolute")
    max_regression: float = Field(0.0, ge=0, le=1, description="tolerated drop vs baseline")
    bless_ties: bool = Field(
        False,
        description="bless a candidate whose accuracy equals the baseline's exactly (most often "
        "the same model again); the first model at a destination is blessed either way",
    )
    compare_baseline: bool = True


class ExportConfig(Section):
    """export: the SavedModel's name, parity check, warmup and TFLite copies."""

    model_name: str = Field("graft", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    parity_tolerance: float = Field(1e-4, gt=0, le=1)
    warmup_requests: int = Field(3, ge=0, le=100)
    flip_average: bool = Field(
        False,
        description="serve (and evaluate) the mean of the scores for the image and its mirror "
        "image: 2x inference per request; for models trained with horizontal flips",
    )
    tflite: list[Literal["float32", "float16", "int8"]] = Field(
        default_factory=list,
        description="TFLite edge models written beside the SavedModel (assets.extra/), each "
        "measured on the test split; int8 is full-integer (docs/edge.md)",
    )

    @field_validator("tflite", mode="before")
    @classmethod
    def _one_variant_is_a_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("tflite")
    @classmethod
    def _no_repeats(cls, v: list[str]) -> list[str]:
        repeated = sorted({x for x in v if v.count(x) > 1})
        if repeated:
            raise ValueError(f"each variant once; repeated: {', '.join(repeated)}")
        return v


class PushConfig(Section):
    """push: where blessed models go and how many versions stay."""

    destination: str = Field(
        "models", description="local path or tf.io.gfile URL; <dest>/<model_name>/<version>"
    )
    keep: int = Field(5, ge=1, le=1000, description="newest versions kept at the destination")
    force: bool = False


class RunnerConfig(Section):
    """runner: where runs are written, the step cache and the step lock's wait."""

    run_root: str = "runs"
    cache: bool = True
    lock_wait_seconds: float = Field(
        3600.0,
        ge=0,
        le=7 * 24 * 3600,
        description="a step output another live run is writing: wait this long for it (then "
        "reuse or resume it), else stop naming that process; the same for an output this run "
        "would rewrite while another run reads it; 0 stops at once",
    )


class GpuConfig(Section):
    """kubeflow.gpu: the GPU type, count and node placement of GPU steps."""

    type: str = "nvidia-tesla-t4"
    count: int = Field(1, ge=0, le=64)
    node_selector: dict[str, str] = Field(
        default_factory=lambda: {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}
    )
    toleration_key: str = "nvidia.com/gpu"


class StepResources(Section):
    """One step's Kubernetes resources on Kubeflow (requests, limits, GPU, retries)."""

    cpu_request: str | None = None
    cpu_limit: str | None = None
    memory_request: str | None = None
    memory_limit: str | None = None
    gpu: bool = False
    retries: int = Field(0, ge=0, le=10)
    caching: bool = True


class KubeflowConfig(Section):
    """kubeflow: the image, pipeline root, host and per-step resources of a KFP run."""

    image: str = "ghcr.io/graft-ml/graft:0.1.0"
    pipeline_root: str | None = None
    host: str | None = None
    experiment: str = "graft"
    pipeline_name: str = "graft"
    run_name: str | None = Field(
        None, max_length=200, description="KFP run name; null: <pipeline_name>-<timestamp>"
    )
    gpu: GpuConfig = Field(default_factory=GpuConfig)
    resources: dict[str, StepResources] = Field(
        default_factory=dict,
        description="per step: its requests and limits, in place of the step's own (the "
        "pipeline checks the step names)",
    )
    workers: int = Field(
        1,
        ge=1,
        le=256,
        description="machines per training step; > 1: each GPU-capable step runs as a TFJob "
        "(Kubeflow Training Operator) of this many workers under MultiWorkerMirroredStrategy",
    )
    gpus_per_worker: int | None = Field(
        None, ge=0, le=16, description="GPUs per TFJob worker; null: kubeflow.gpu.count"
    )
    tfjob_timeout_s: int = Field(
        24 * 3600,
        ge=60,
        le=30 * 24 * 3600,
        description="a TFJob still unfinished after this long fails the step",
    )


class GraftConfig(Section):
    """The whole run."""

    data: DataConfig
    recipe: Literal["auto", "seed", "manual"] = Field(
        "auto",
        description="auto: the advise step measures the data and plans the training; seed: "
        "the seed's fixed recipe; manual: the sections below as written",
    )
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    drift: DriftConfig = Field(default_factory=DriftConfig)
    advise: AdviseConfig = Field(default_factory=AdviseConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    base: BaseConfig = Field(default_factory=BaseConfig)
    head: HeadConfig = Field(default_factory=HeadConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    train_head: TrainHeadConfig = Field(default_factory=TrainHeadConfig)
    fine_tune: FineTuneConfig = Field(default_factory=FineTuneConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    push: PushConfig = Field(default_factory=PushConfig)
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    kubeflow: KubeflowConfig = Field(default_factory=KubeflowConfig)

    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)

    @model_validator(mode="after")
    def _kept_keys_exist(self) -> GraftConfig:
        for key in self.advise.keep:
            if not has_key(key):
                raise ValueError(f"advise.keep: '{key}' is not a config key")
        return self

    @model_validator(mode="after")
    def _refit_only_without_fine_tuning(self) -> GraftConfig:
        tunes = self.recipe == "seed" or (self.recipe == "manual" and self.fine_tune.enabled)
        if self.train_head.refit == "always" and tunes:
            raise ValueError(
                f"train_head.refit: always refits the head-only model, but recipe {self.recipe} "
                "fine-tunes (fine_tune.enabled: true); set fine_tune.enabled: false to ship a "
                "refit head, or train_head.refit: never"
            )
        return self

    @model_validator(mode="after")
    def _store_beside_the_runs(self) -> GraftConfig:
        if self.features.store is None:
            root = self.runner.run_root
            self.features.store = root.rstrip("/") + "/features" if root else "features"
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


# ---------------------------------------------------------------- loading


MAX_YAML_DEPTH = 64  # a config nests a few levels; 20,000 would exhaust Python's stack


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader without aliases, duplicate keys or deep nesting.

    An alias (`*ref`, merge keys `<<: *base` included) can expand a few lines into gigabytes;
    a duplicate key silently replaces the first one's value; deep nesting ends in a bare
    RecursionError. Each is refused with its line.
    """

    _depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(
                f"YAML alias '*{event.anchor}' at line {event.start_mark.line + 1}: aliases and "
                "merge keys are not allowed in Graft configs (an alias can expand into gigabytes); "
                "write the values out"
            )
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.YAMLError(
                    f"line {mark.line + 1}: nested deeper than {MAX_YAML_DEPTH} levels"
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.YAMLError(
                    f"duplicate key '{key}' at line {key_node.start_mark.line + 1} (first at "
                    f"line {seen[key]}): a second value would silently replace the first"
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


# YAML 1.2 floats: PyYAML (YAML 1.1) reads `1e-4` (no dot) as a string, which the strict
# float fields would refuse
_NoAliasLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _safe_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass


def _parse_scalar(text: str) -> Any:
    """`--set` values are YAML scalars: 3, 1e-4, true, null, [a, b], {alpha: 0.35}."""
    if text == "":
        return ""
    try:
        return _safe_yaml(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set value {text!r}: {e}") from None


def with_values(cfg: GraftConfig, values: dict[str, Any]) -> GraftConfig:
    """A copy of a validated config with typed values set by dotted key (the advise plan).

    Args:
        cfg: a validated config.
        values: dotted key (e.g. "train_head.epochs") -> value.

    Returns:
        The new config, validated again; `cfg` itself when `values` is empty.
    """
    if not values:
        return cfg
    raw = cfg.to_dict()
    for dotted, value in values.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        if leaf not in node:
            raise ConfigError(f"plan sets unknown config key '{dotted}'")
        node[leaf] = value
    return GraftConfig.model_validate(raw)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--set key=value` overrides to a raw config dict, creating sections.

    Args:
        raw: the config as loaded from YAML (changed in place).
        overrides: "dotted.key=value" strings; values are parsed as YAML scalars.

    Returns:
        `raw`, with the overrides set.

    Raises:
        ConfigError: an item without "=", or a key whose parent is not a section.
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for p in parts[:-1]:
            if node.get(p) is None:
                node[p] = {}
            if not isinstance(node[p], dict):
                raise ConfigError(f"--set {key}: '{p}' is not a section")
            node = node[p]
        node[parts[-1]] = _parse_scalar(value)
    return raw


def has_key(dotted: str) -> bool:
    """Whether a dotted key names a config field (or a key inside a dict-valued one)."""
    model: Any = GraftConfig
    for part in dotted.split("."):
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return model is not None  # inside a dict-valued field (base.kwargs.alpha)
        field = next((f for n, f in model.model_fields.items() if part in (n, f.alias)), None)
        if field is None:
            return False
        ann = field.annotation
        args = [a for a in getattr(ann, "__args__", ()) if a is not type(None)]
        model = ann if isinstance(ann, type) else (args[0] if len(args) == 1 else dict)
    return True


def kept_by(key: str, keep: list[str]) -> bool:
    """Whether advise must leave `key` alone: the user set it, or a section around or in it.

    Args:
        key: a dotted config key advise would set.
        keep: the dotted keys the user set (advise.keep).

    Returns:
        True when `key`, a section holding it, or a key inside it is in `keep`.
    """
    return any(key == k or key.startswith(k + ".") or k.startswith(key + ".") for k in keep)


def leaf_keys(raw: dict, prefix: str = "") -> list[str]:
    """The dotted keys a YAML mapping sets, down to its scalars and lists.

    Args:
        raw: the mapping.
        prefix: put before each key (a section's "name.").

    Returns:
        The dotted keys, in the mapping's order.
    """
    out = []
    for k, v in raw.items():
        dotted = f"{prefix}{k}"
        out += leaf_keys(v, dotted + ".") if isinstance(v, dict) and v else [dotted]
    return out


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: Any = GraftConfig
    for part in loc:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = next((f for n, f in model.model_fields.items() if part in (n, f.alias)), None)
        if field is None:
            return None
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        elif args and isinstance(args[-1], type) and issubclass(args[-1], BaseModel):
            model = args[-1]  # dict[str, Model]
        else:
            model = ann
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not isinstance(p, int))
        path = ".".join(str(p) for p in loc).replace("validate_", "validate") or "(top level)"
        if e["type"] == "extra_forbidden":
            parent = _model_at(loc[:-1]) if len(loc) > 1 else GraftConfig
            allowed = (
                sorted((f.alias or n) for n, f in parent.model_fields.items()) if parent else []
            )
            guess = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f" (did you mean '{guess[0]}'?)" if guess else ""
            lines.append(f"  {path}: unknown key{hint}; allowed: {', '.join(allowed)}")
        else:
            got = e.get("input")
            got_s = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"  {path}: {e['msg']}{got_s}")
    return "invalid config:\n" + "\n".join(lines)


def parse_config(raw: dict[str, Any], source: str | Path | None = None) -> GraftConfig:
    """Validate a raw config dict; every error names its key.

    Args:
        raw: the config as loaded from YAML.
        source: the config file, named in the error.

    Returns:
        The validated GraftConfig.

    Raises:
        ConfigError: an unknown key or a bad value, with the key path and the allowed values.
    """
    try:
        return GraftConfig.model_validate(raw)
    except ValidationError as err:
        text = _format_errors(err)
        if source:
            text = text.replace("invalid config:", f"invalid config {source}:", 1)
        raise ConfigError(text) from None


def _read_yaml_file(p: Path) -> Any:
    """The YAML document in p; ConfigError naming p for bytes, syntax, duplicates, depth."""
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{p}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
            "save the config as UTF-8"
        ) from None
    try:
        return _safe_yaml(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    except RecursionError:  # nesting that the depth check cannot see (e.g. [[[[ in one scalar)
        raise ConfigError(f"{p}: not valid YAML: nested too deeply") from None


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    defaults: dict[str, Any] | None = None,
    template: bool = False,
) -> GraftConfig:
    """YAML file (or none) + `--set` overrides -> a validated GraftConfig.

    The keys the user gave (the file's, unless it is Graft's own `template`, and every `--set`)
    go to `advise.keep`, so that `recipe: auto` plans around them. A file that lists
    `advise.keep` itself (a run's written config.yaml does) keeps its list, with every `--set`
    key added; a `--set advise.keep=[...]` is taken as given.

    Args:
        path: the YAML file; None for the defaults alone.
        overrides: `--set` "dotted.key=value" strings.
        defaults: a raw config under the file (e.g. `graft train`'s template values).
        template: the file is Graft's own template, not the user's: its keys are not kept.

    Returns:
        The validated GraftConfig, relative paths resolved against the file.
    """
    raw: dict[str, Any] = json.loads(json.dumps(defaults or {}))
    given: list[str] = []
    if path:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file not found: {p}")
        loaded = _read_yaml_file(p) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections")
        _resolve_relative_paths(loaded, p.resolve().parent)
        written = json.loads(json.dumps(loaded))  # as in the file: --set changes raw, not this
        _deep_merge(raw, loaded)
        if not template:
            given += leaf_keys(loaded)
    apply_overrides(raw, overrides or [])
    flags = [o.split("=", 1)[0].strip() for o in overrides or []]
    advise = raw.setdefault("advise", {}) if isinstance(raw.get("advise", {}), dict) else {}
    if "advise.keep" not in flags and isinstance(advise, dict):
        if "advise.keep" in given and isinstance(advise.get("keep"), list):
            # the file's list, what --set changed, and what was edited by hand in the file
            given = [*advise["keep"], *flags, *hand_edits(written, Path(path), advise["keep"])]
        else:
            given += flags
        advise["keep"] = sorted({k for k in given if k.split(".")[0] not in ("advise", "recipe")})
    return parse_config(raw, path)


# pipeline.runner writes a run's config.yaml and, beside it, this record of the same config
RUN_RECORD = "run.json"


def hand_edits(written: dict, path: Path, keep: list[str]) -> list[str]:
    """Keys of a run's written config.yaml changed since Graft wrote it, and not in its
    `advise.keep`: found against the run's record (RUN_RECORD beside the file, which holds the
    config as written). Under `recipe: auto` advise replanned such an edit, and the run went
    on without it, saying nothing; now it is the user's setting, kept, and said so.

    Args:
        written: the file's mapping, as read.
        path: the file.
        keep: its advise.keep.

    Returns:
        The edited dotted keys (logged when the recipe plans); empty for any other file.
    """
    try:
        record = json.loads((path.parent / RUN_RECORD).read_text())
        recorded = record["config"]
        ours = os.path.realpath(record["config_file"]) == os.path.realpath(path)
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if not ours or not isinstance(recorded, dict):
        return []
    edited = [
        key
        for key in leaf_keys(written)
        if key.split(".")[0] not in ("advise", "recipe")
        and not kept_by(key, keep)
        and _at(written, key) != _at(recorded, key)
    ]
    if edited and written.get("recipe") != "manual":  # a manual recipe plans nothing
        from graft.core.log import log

        shown = ", ".join(f"{k}={_at(written, k)!r}" for k in edited)
        log(
            f"{path}: {shown}: not in advise.keep, yet changed since the run wrote it: "
            "kept as your setting (advise plans around it)",
            "warn",
        )
    return edited


def _at(raw: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(raw, dict) or part not in raw:
            return _MISSING
        raw = raw[part]
    return raw


_MISSING = object()


def _deep_merge(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_merge(dst[k], v)
        else:
            dst[k] = v


# Config keys that hold a path. One rule: a relative path written in a config file means
# relative to that file's folder, wherever graft is run from.
PATH_KEYS = (
    "data.path",
    "data.tfds_data_dir",
    "base.weights",
    "runner.run_root",
    "push.destination",
    "features.store",
)
# base.weights values that name weights rather than a file
NAMED_WEIGHTS = ("imagenet", "demo")


def _resolve_relative_paths(loaded: dict, base_dir: Path) -> None:
    for dotted in PATH_KEYS:
        section, key = dotted.split(".")
        node = loaded.get(section)
        value = node.get(key) if isinstance(node, dict) else None
        if not isinstance(value, str) or not value or "://" in value:
            continue
        if dotted == "base.weights" and value in NAMED_WEIGHTS:
            continue
        path = Path(value).expanduser()
        node[key] = str(path if path.is_absolute() else (base_dir / path).resolve())
    for entry in (loaded.get("advise") or {}).get("bases") or []:  # advise.bases[].weights
        value = entry.get("weights") if isinstance(entry, dict) else None
        if isinstance(value, str) and value and "://" not in value and value not in NAMED_WEIGHTS:
            path = Path(value).expanduser()
            entry["weights"] = str(path if path.is_absolute() else (base_dir / path).resolve())


def local_path_values(cfg: GraftConfig) -> dict[str, str]:
    """PATH_KEYS holding local paths, made absolute against the working directory.

    The one normalisation of paths: a run fingerprints the config with these values and writes
    them to its config.yaml, so re-running that file (from anywhere) keys every step the same.
    """
    raw = cfg.to_dict()
    out = {}
    for dotted in PATH_KEYS:
        section, key = dotted.split(".")
        value = raw.get(section, {}).get(key)
        if not isinstance(value, str) or not value or "://" in value:
            continue
        if dotted == "base.weights" and value in NAMED_WEIGHTS:
            continue
        out[dotted] = os.path.abspath(os.path.expanduser(value))
    return out


def with_absolute_paths(cfg: GraftConfig) -> GraftConfig:
    """The config with its local paths made absolute, so a run fingerprints and
    writes the same values from any working directory.

    Args:
        cfg: a validated config.

    Returns:
        A copy whose PATH_KEYS hold absolute local paths (URLs and named weights left alone).
    """
    return with_values(cfg, local_path_values(cfg))


def dump_yaml(cfg: GraftConfig) -> str:
    """The config as YAML, in its fields' order, for a run's config.yaml.

    Args:
        cfg: a validated config.

    Returns:
        The YAML text.
    """
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
