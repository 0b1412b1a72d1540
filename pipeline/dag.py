"""THE pipeline definition: the steps, what each reads, the config it depends on, when it runs.

Written once. The local runner walks STEPS in order; the Kubeflow builder turns the same
list into a kfp pipeline. A Step is the whole contract between them: neither has a branch
on a step's name. Each step's `run` adapts the (scoped) config + input dirs to the plain
component function and returns a small JSON-able summary.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from graft.core.config import ConfigError, GraftConfig, StepResources
from graft.core.scope import ScopedConfig

__all__ = [
    "scoped",
    "RESULT_FILE",
    "STEPS",
    "STEP_NAMES",
    "Step",
    "When",
    "check_resources",
    "external_key",
    "forced",
    "gate_outputs",
    "kept_settings",
    "output_name",
    "plan_notes",
    "resources",
    "run_step",
    "section_values",
    "step",
    "step_values",
]


# The adapters receive a ScopedConfig that reads like GraftConfig.
StepFn = Callable[[GraftConfig, dict[str, str], str], dict[str, Any]]
KeyFn = Callable[[GraftConfig, dict[str, str]], str]


@dataclass(frozen=True)
class When:
    """Run a step only when a bool in an upstream step's summary is true, or a config flag forces.

    On Kubeflow the upstream step's kfp wrapper returns that bool as its output, and the
    step runs under `dsl.If`; locally the runner reads the upstream summary.
    """

    step: str
    output: str
    forced_by: str | None = None  # dotted config key, among the step's own sections


@dataclass(frozen=True)
class Out:
    """One Kubeflow output of a step: its kfp artifact type and, for an output that is a
    dashboard view of the step's output directory (`view` set), the kfp_runtime.VIEWS entry
    that fills it from there and the file in that directory it reads."""

    type: str  # kfp artifact class: Dataset, Artifact, Model, Metrics, ClassificationMetrics, HTML
    view: str | None = None  # None: the step's output directory itself (one per step, first)
    file: str | None = None


# Kubernetes requests and limits per step (kubeflow.resources.<step> replaces them)
SMALL = StepResources(
    cpu_request="1", cpu_limit="2", memory_request="2Gi", memory_limit="4Gi", retries=2
)
TRAINING = StepResources(
    cpu_request="4", cpu_limit="8", memory_request="8Gi", memory_limit="16Gi", gpu=True, retries=1
)


@dataclass(frozen=True)
class Step:
    """One pipeline step, declared once: its inputs, the config sections it may read (its
    cache key), its Kubeflow outputs, when it runs and what else its output depends on.
    The local runner and the Kubeflow builder both walk STEPS and never branch on a name.
    """

    name: str
    inputs: dict[str, str]  # input name -> the step whose output it is
    sections: tuple[str, ...]  # config sections (dotted paths): all a step may read; its cache key
    artifact: dict[str, Out]  # Kubeflow outputs by name: the output directory first, then views
    run: StepFn
    doc: str = ""
    # on Kubeflow, unless kubeflow.resources names the step
    resources: StepResources = field(default_factory=lambda: SMALL)
    # The input holding advise's plan: the step sees the config with that plan applied.
    plan_from: str | None = None
    cacheable: bool = True
    gpu_capable: bool = False
    distributed: bool = False  # kubeflow.workers > 1: runs as a TFJob of that many workers
    when: When | None = None
    # What else the output depends on, outside the config and the inputs (e.g. the data on disk).
    external_key: KeyFn | None = field(default=None, compare=False)
    # A config key that lists more dotted keys the step reads (advise reads the settings the
    # user pinned, `advise.keep`, to plan around them and say so): they key its cache too.
    reads_keys_listed_at: str | None = None
    # Upstream outputs the step only shows (in its report), outside its cache key: a cached
    # output shows them as they were when it ran. Passed with the inputs, by the same names.
    shows: dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------- step adapters


def _geometry(cfg: GraftConfig):
    """data.resize and data.crop_fraction: how every step shapes an image into the input."""
    from graft.components.geometry import Geometry

    return Geometry.of(cfg.data)


def _ingest(cfg: GraftConfig, inputs: dict[str, str], out: str) -> dict:
    from graft.components.ingest import ingest

    r = ingest(cfg.data, out)
    return {
        "written": r.written,
        "quarantined": r.quarantined,
        "input_files": r.input_files,
        "labels": r.labels,
        # incremental ingest: the earlier output reused, and files added / changed / removed /
        # reused / retried (quarantined before) / decoded
        "incremental": r.incremental,
    }


def _source_key(cfg: GraftConfig, inputs: dict[str, str]) -> str:
    from graft.components.ingest import source_fingerprint

    return source_fingerprint(cfg.data)


def _validate(cfg: GraftConfig, inputs: dict[str, str], out: str) -> dict:
    from graft.components.validate import validate

    r = validate(cfg.validate_, inputs["examples"], out)
    return {
        "passed": r.passed,
        "warnings": len(r.warnings),
        "excluded_from_eval": len(r.exclude_from_eval),
    }


def _drift(cfg: GraftConfig, inputs: dict[str, str], out: str) -> dict:
    from graft.components.drift import check_drift

    r = check_drift(
        cfg.drift,
        inputs["examples"],
        inputs["validation"],
        out,
        destination=cfg.push.destination,
        model_name=cfg.export.model_name,
        base=cfg.base,
        image_size=cfg.data.image_size,
        feature_store=cfg.features.store,
        geometry=_geometry(cfg),
    )
    return {"checked": r.checked, "flagged": r.flagged, "blocked": r.blocked, "reasons": r.reasons}


def _served_key(cfg: GraftConfig, inputs: dict[str, str]) -> str:
    """Drift depends on what is served now: the version it compares with (served_version:
    the newest with a saved_model.pb, not one still being copied in)."""
    from graft.components.registry import served_version

    return str(served_version(cfg.push.destination, cfg.export.model_name))


def _advise(cfg: GraftConfig, inputs: dict[str, str], out: str) -> dict:
    from graft.components.advise import advise

    r = advise(
        inputs["examples"],
        inputs["validation"],
        out,
        recipe=cfg.recipe,
        base_cfg=cfg.base,
        image_size=cfg.data.image_size,
        store_root=cfg.features.store,
        folds=cfg.advise.folds,
        max_probe_images=cfg.advise.max_probe_images,
        small_data=cfg.advise.small_data,
        budget_minutes=cfg.train.budget_minutes,
        keep=kept_settings(cfg),
        geometry=_geometry(cfg),
        bases=cfg.advise.bases,
        seed=cfg.train.seed,
    )
    return {
        "recipe": r.recipe,
        "cell": r.cell,
        "planned": len(r.overrides),
        "kept": sorted(r.kept),
        "seconds": r.seconds,
    }


def _train_head(cfg: GraftConfig, inputs: dict[str, str], out: str) -> dict:
    from graft.components.train import train_head

    r = train_head(
        inputs["examples"],
        out,
        base=cfg.base,
        head=cfg.head,
        train=cfg.train,
        cfg=cfg.train_head,
        augment=cfg.augment,
        image_size=cfg.data.image_size,
        validation_dir=inputs["validation"],
        feature_store=cfg.features.store,
        geometry=_geometry(cfg),
    )
    feats = r.extra.features or {}
    return {
        "val_accuracy": r.best_val_accuracy,
        "epochs": r.epochs_run,
        "cache_used": r.cache_used,
        "features_computed": feats.get("computed"),
        "features_reused": feats.get("reused"),
        "view_rows_computed": feats.get("view_rows_computed"),
        "view_rows_reused": feats.get("view_rows_reused"),
        "seconds": r.seconds,
    }


def _fine_tune(cfg: GraftConfig, inputs: dict[str, str], out: str) -> dict:
    from graft.components.train import fine_tune

    r = fine_tune(
        inputs["examples"],
        inputs["head_model"],
        out,
        train=cfg.train,
        cfg=cfg.fine_tune,
        augment=cfg.augment,
        image_size=cfg.data.image_size,
        validation_dir=inputs["validation"],
        head_cfg=cfg.train_head,
        skip_reason=_fine_tune_skip_reason(inputs["advice"]),
        geometry=_geometry(cfg),
        refit_reason=_refit_reason(inputs["advice"], cfg.train_head.refit),
    )
    refit = getattr(r.extra, "refit", None)
    return {
        "ran": r.extra.guard != "disabled",
        # a refit head trained on val: it has no held-out val score
        "val_accuracy": None if refit else r.best_val_accuracy,
        "epochs": r.epochs_run,
        "guard": r.extra.guard,
        "shipped": r.extra.shipped,
        "refit_epochs": refit["epochs"] if refit else None,
        "refit_images": refit["images"] if refit else None,
        "seconds": r.seconds,
    }


def _refit_reason(advice_dir: str, refit: str) -> str:
    """Why train_head.refit is what it is: advise's decision and evidence, or the config."""
    from graft.components.advise import read_advice

    advice = read_advice(advice_dir)
    if "train_head.refit" in advice["overrides"]:
        why = next((d["reason"] for d in advice["decisions"] if d["what"] == "refit"), "")
        return f"advise: {why}" if why else f"advise planned train_head.refit: {refit}"
    if refit == "auto":
        return (
            f"train_head.refit: auto refits only under recipe auto, where advise decides from "
            f"k-fold evidence (recipe {advice['recipe']})"
        )
    kept = " (your setting, kept)" if "train_head.refit" in advice.get("kept", {}) else ""
    return f"train_head.refit: {refit} in the config{kept}"


def _fine_tune_skip_reason(advice_dir: str) -> str:
    """Who turned fine-tuning off: advise's plan (and why) or the config as set."""
    from graft.components.advise import read_advice

    advice = read_advice(advice_dir)
    if advice["overrides"].get("fine_tune.enabled") is False:
        why = next((d["reason"] for d in advice["decisions"] if d["what"] == "fine-tune"), "")
        return f"advise: {why.split(';')[0]}" if why else "advise planned no fine-tuning"
    return "fine_tune.enabled: false in the config"


def _evaluate(cfg: GraftConfig, inputs: dict[str, str], out: str) -> dict:
    from graft.components.evaluate import evaluate

    r = evaluate(
        inputs["examples"],
        inputs["head_model"],
        inputs["model"],
        out,
        cfg=cfg.evaluate,
        destination=cfg.push.destination,
        model_name=cfg.export.model_name,
        image_size=cfg.data.image_size,
        validation_dir=inputs["validation"],
        flip_average=cfg.export.flip_average,
        advice_dir=inputs["advice"],
        drift_dir=inputs.get("drift"),
        geometry=_geometry(cfg),
    )
    return {
        "blessed": r.blessed,
        "reasons": r.reasons,
        "accuracy": r.candidate["accuracy"],
        "balanced_accuracy": r.candidate["balanced_accuracy"],
        "macro_f1": r.candidate["macro_f1"],
        "head_accuracy": r.head_only["accuracy"],
        "baseline_accuracy": r.baseline["accuracy"] if r.baseline else None,
        "fine_tuned": r.fine_tuned,
    }


def _baseline_key(cfg: GraftConfig, inputs: dict[str, str]) -> str:
    """Evaluation depends on what is served now: the newest version that is not this model."""
    from graft.components.hashing import file_sha256
    from graft.components.registry import baseline_version

    cand = os.path.join(inputs["model"], "model.keras")
    sha = file_sha256(cand) if os.path.exists(cand) else None
    return str(baseline_version(cfg.push.destination, cfg.export.model_name, sha))


def _export(cfg: GraftConfig, inputs: dict[str, str], out: str) -> dict:
    from graft.components.export import export

    r = export(
        inputs["model"],
        inputs["examples"],
        inputs["evaluation"],
        out,
        cfg=cfg.export,
        image_size=cfg.data.image_size,
        base=cfg.base,
        head=cfg.head,
        settings=cfg.values(),
        geometry=_geometry(cfg),
    )
    summary = {"version": r.version, "path": r.path, "parity_max_abs_diff": r.parity_max_abs_diff}
    edge = os.path.join(out, "tflite.json")  # export.tflite: the variants, for the run summary
    if os.path.exists(edge):
        with open(edge) as f:
            summary["tflite"] = json.load(f)["variants"]
    return summary


def _push(cfg: GraftConfig, inputs: dict[str, str], out: str) -> dict:
    from graft.components.push import push

    r = push(
        inputs["exported"],
        inputs["evaluation"],
        out,
        cfg=cfg.push,
        model_name=cfg.export.model_name,
        recheck=cfg.evaluate.compare_baseline,
        drift_dir=inputs.get("drift"),
    )
    return {
        "pushed": r.pushed,
        "forced": r.forced,
        "recheck": r.recheck,
        "version": r.version,
        "destination": r.destination,
        "already_at_destination": r.already_at_destination,
        "reasons": r.reasons,  # why not, when not: the run summary says it
    }


GEOMETRY = ("data.resize", "data.crop_fraction")  # every step that turns images into pixels

STEPS: list[Step] = [
    Step(
        "ingest",
        {},
        ("data",),
        {"examples": Out("Dataset")},
        _ingest,
        "Beam: images -> TFRecords, labels, stats, quarantine",
        resources=SMALL.model_copy(update={"cpu_request": "2", "cpu_limit": "4"}),
        external_key=_source_key,
    ),
    Step(
        "validate",
        {"examples": "ingest"},
        ("validate",),
        {"validation": Out("Artifact")},
        _validate,
        "blocking data checks: classes, counts, corrupt rate, leakage",
    ),
    Step(
        "drift",
        {"examples": "ingest", "validation": "validate"},
        (
            "drift",
            "push.destination",
            "export.model_name",
            "base",
            "data.image_size",
            *GEOMETRY,
            "features",
        ),
        {
            "drift_report": Out("Artifact"),
            "metrics": Out("Metrics", view="json_metrics", file="drift.json"),
        },
        _drift,
        "new data vs the served model's: labels, image stats, embeddings, confidence",
        external_key=_served_key,
    ),
    Step(
        "advise",
        {"examples": "ingest", "validation": "validate"},
        (
            "recipe",
            "data.image_size",
            *GEOMETRY,
            "base",
            "train.budget_minutes",
            "train.seed",
            "advise",
            "features",
        ),
        {
            "advice": Out("Artifact"),
            "metrics": Out("Metrics", view="json_metrics", file="advice.json"),
        },
        _advise,
        "measure data size and similarity to the base; plan the training (recipe)",
        resources=TRAINING,
        gpu_capable=True,
        reads_keys_listed_at="advise.keep",
    ),
    Step(
        "train_head",
        {"examples": "ingest", "validation": "validate", "advice": "advise"},
        (
            "data.image_size",
            *GEOMETRY,
            "base",
            "head",
            "train",
            "train_head",
            "augment",
            "features",
        ),
        {"model": Out("Model")},
        _train_head,
        "new head on the frozen base (feature store)",
        resources=TRAINING,
        plan_from="advice",
        gpu_capable=True,
        distributed=True,
    ),
    Step(
        "fine_tune",
        {
            "examples": "ingest",
            "validation": "validate",
            "advice": "advise",
            "head_model": "train_head",
        },
        # train_head: the cross-validated guard re-trains fold heads as that stage does
        ("data.image_size", *GEOMETRY, "train", "fine_tune", "augment", "train_head"),
        {"model": Out("Model")},
        _fine_tune,
        "unfreeze the base as fine_tune.unfreeze says, at a low LR, guarded",
        resources=TRAINING,
        plan_from="advice",
        gpu_capable=True,
        distributed=True,
    ),
    Step(
        "evaluate",
        {
            "examples": "ingest",
            "validation": "validate",
            "advice": "advise",
            "head_model": "train_head",
            "model": "fine_tune",
        },
        (
            "data.image_size",
            *GEOMETRY,
            "evaluate",
            "push.destination",
            "export.model_name",
            "export.flip_average",
        ),
        {
            "evaluation": Out("Artifact"),
            "metrics": Out("Metrics", view="evaluation_metrics", file="evaluation.json"),
            "confusion": Out("ClassificationMetrics", view="confusion", file="evaluation.json"),
            "report": Out("HTML", view="report", file="evaluation.json"),
        },
        _evaluate,
        "test metrics, plots, report, blessing vs the served baseline",
        plan_from="advice",
        external_key=_baseline_key,
        # the report's drift section; drift re-runs whenever the served version changes, and
        # that alone must not re-run evaluation
        shows={"drift": "drift"},
    ),
    Step(
        "export",
        {"model": "fine_tune", "examples": "ingest", "evaluation": "evaluate", "advice": "advise"},
        ("data.image_size", *GEOMETRY, "export", "base", "head", "push.force"),
        {
            "exported": Out("Model"),
            "edge_models": Out("Model", view="edge_models", file="tflite.json"),
        },
        _export,
        "SavedModel for TF Serving with in-graph preprocessing, warmup, model card; "
        "export.tflite: measured TFLite models",
        plan_from="advice",
        # a candidate evaluate did not bless is never pushed: exporting it is wasted time
        when=When("evaluate", "blessed", forced_by="push.force"),
    ),
    Step(
        "push",
        {"exported": "export", "evaluation": "evaluate", "drift": "drift"},
        ("push", "export.model_name", "evaluate.compare_baseline"),
        {"pushed": Out("Artifact")},
        _push,
        "atomic copy to the serving destination, only when blessed",
        resources=SMALL.model_copy(update={"caching": False}),
        cacheable=False,
        when=When("evaluate", "blessed", forced_by="push.force"),
    ),
]
STEP_NAMES: list[str] = [s.name for s in STEPS]


def step(name: str) -> Step:
    """The step of this name, for code that holds a name (the CLI, a kfp task).

    Args:
        name: a step name, one of STEP_NAMES.

    Returns:
        The Step.

    Raises:
        KeyError: an unknown name, listing the steps.
    """
    for s in STEPS:
        if s.name == name:
            return s
    raise KeyError(f"unknown step '{name}'; steps: {', '.join(STEP_NAMES)}")


def output_name(s: Step) -> str:
    """The name of the step's output directory among its Kubeflow outputs.

    Args:
        s: a step.

    Returns:
        The first artifact name that is not a view.
    """
    return next(name for name, out in s.artifact.items() if out.view is None)


def gate_outputs(s: Step) -> list[str]:
    """The bools of the step's summary that other steps' `when` reads (Kubeflow outputs too).

    Args:
        s: a step.

    Returns:
        Their names, sorted; empty when no step is gated on this one.
    """
    return sorted({t.when.output for t in STEPS if t.when and t.when.step == s.name})


def resources(cfg: GraftConfig, s: Step) -> StepResources:
    """The step's Kubernetes resources: kubeflow.resources.<step> if set, else the step's own.

    Args:
        cfg: the config.
        s: a step.

    Returns:
        Its StepResources.
    """
    check_resources(cfg)
    return cfg.kubeflow.resources.get(s.name, s.resources)


def check_resources(cfg: GraftConfig) -> None:
    """kubeflow.resources names only steps of this pipeline (a typo would be ignored).

    Args:
        cfg: the config.

    Raises:
        ConfigError: a step name that is not in STEPS, with the valid names.
    """
    for key in cfg.kubeflow.resources:
        if key not in STEP_NAMES:
            guess = difflib.get_close_matches(key, STEP_NAMES, n=1)
            hint = f" (did you mean '{guess[0]}'?)" if guess else ""
            raise ConfigError(
                f"kubeflow.resources.{key}: unknown step{hint}; steps: {', '.join(STEP_NAMES)}"
            )


def declared(s: Step, cfg: GraftConfig) -> tuple[str, ...]:
    """The step's sections, plus the keys listed at `reads_keys_listed_at`."""
    if not s.reads_keys_listed_at:
        return s.sections
    extra = []
    for key in read_key(cfg, s.reads_keys_listed_at):
        key = _field_path(cfg, key)  # base.kwargs.alpha: the field is base.kwargs
        if not any(key == x or key.startswith(x + ".") for x in (*s.sections, *extra)):
            extra.append(key)
    return s.sections + tuple(extra)


def _field_path(cfg: Any, dotted: str) -> str:
    """The longest prefix of a dotted key that names a config field (not a dict entry)."""
    node, parts = cfg, []
    for part in dotted.split("."):
        fields = getattr(type(node), "model_fields", {})
        name = next((n for n, f in fields.items() if part in (n, f.alias)), None)
        if name is None:
            break
        node, parts = getattr(node, name), [*parts, part]
    return ".".join(parts)


# YAML spellings that are not the field's Python name (validate: validate_)
_FIELD_OF_ALIAS = {f.alias: n for n, f in GraftConfig.model_fields.items() if f.alias}


def kept_settings(cfg: GraftConfig) -> dict[str, Any]:
    """advise.keep's keys and values, a kept section as each of its leaf keys: advise looks a
    setting up by its leaf (`fine_tune` kept means fine_tune.enabled kept).

    Args:
        cfg: the config.

    Returns:
        Dotted leaf key -> its value.
    """
    from graft.core.config import leaf_keys

    out = {}
    for key in cfg.advise.keep:
        value = read_key(cfg, key)
        if hasattr(value, "model_dump"):  # a section: its leaves
            value = value.model_dump(by_alias=True)
        leaves = leaf_keys(value, key + ".") if isinstance(value, dict) and value else [key]
        out.update({leaf: read_key(cfg, leaf) for leaf in leaves})
    return out


def read_key(cfg: Any, dotted: str) -> Any:
    """A dotted key's value from the config (or a scoped view), into dict-valued fields too."""
    node = cfg
    for part in dotted.split("."):
        if isinstance(node, dict):
            node = node.get(part)
        else:
            node = getattr(node, _FIELD_OF_ALIAS.get(part, part))
    return node


def scoped(s: Step, cfg: GraftConfig) -> ScopedConfig:
    """The config as step `s` may see it: its declared sections and nothing else.

    Args:
        s: the step.
        cfg: the config.

    Returns:
        A view that raises on a read outside the step's declared keys.
    """
    return ScopedConfig(cfg, declared(s, cfg), s.name)


def section_values(cfg: GraftConfig, sections: tuple[str, ...]) -> dict[str, Any]:
    """The values of config sections, as a step scoped to them would see them.

    Args:
        cfg: the config.
        sections: dotted section paths.

    Returns:
        Dotted path -> value.
    """
    return ScopedConfig(cfg, sections).values()


def step_values(s: Step, cfg: GraftConfig) -> dict[str, Any]:
    """What keys the step's cache: the values of everything it may read.

    Args:
        s: a step.
        cfg: the config.

    Returns:
        Dotted path -> value, for the step's declared sections (and advise's plan, if it has one).
    """
    return section_values(cfg, declared(s, cfg))


def external_key(s: Step, cfg: GraftConfig, inputs: dict[str, str]) -> str | None:
    """What else the step's output depends on besides config and inputs (ingest: the
    data on disk; evaluate: the version served), part of its cache key.

    Args:
        s: a step.
        cfg: the config.
        inputs: input name -> upstream output directory.

    Returns:
        The key, or None for a step without one.
    """
    return s.external_key(scoped(s, cfg), inputs) if s.external_key else None


def forced(s: Step, cfg: GraftConfig) -> bool:
    """Whether the step's `when` is overridden by its config flag.

    Args:
        s: a step.
        cfg: the config.

    Returns:
        True when the step has a `when` with forced_by and that config key is true.
    """
    if not (s.when and s.when.forced_by):
        return False
    node: Any = scoped(s, cfg)
    for part in s.when.forced_by.split("."):
        node = getattr(node, part)
    return bool(node)


def planned(cfg: GraftConfig, advice_dir: str) -> GraftConfig:
    """The config with the advise step's plan applied (nothing under recipe: manual)."""
    from graft.components.advise import read_advice
    from graft.core.config import with_values

    return with_values(cfg, read_advice(advice_dir)["overrides"])


def plan_notes(outputs: dict[str, str]) -> list[str]:
    """What the plan chose and which of the user's settings it kept, for the written config.

    Args:
        outputs: step name -> output directory of the steps run so far.

    Returns:
        Comment lines; empty when advise did not run.
    """
    from graft.components.advise import read_advice

    sources = {s.inputs[s.plan_from] for s in STEPS if s.plan_from}
    for src in sources:
        path = outputs.get(src)
        if not path or not os.path.exists(os.path.join(path, "advice.json")):
            continue
        advice = read_advice(path)
        chosen = ", ".join(f"{k}={v}" for k, v in sorted(advice["overrides"].items()))
        notes = [f"recipe {advice['recipe']}: advise chose {chosen or 'nothing'}"]
        for key, k in sorted(advice.get("kept", {}).items()):
            yours = ", ".join(f"{n}={v}" for n, v in k["yours"].items())
            notes.append(f"your setting {yours} kept (advise would choose {key}={k['advise']})")
        return notes
    return []


RESULT_FILE = "_step_result.json"


def run_step(
    name: str, cfg: GraftConfig, inputs: dict[str, str], out_dir: str, reads: set[str] | None = None
) -> dict[str, Any]:
    """Run one step into out_dir, seeing only its declared config, and record its summary.

    Args:
        name: the step's name.
        cfg: the config (the step sees its sections only, with advise's plan when it has one).
        inputs: input name -> upstream output directory.
        out_dir: the step's output directory.
        reads: when given, receives the dotted config keys the step read.

    Returns:
        The step's summary (also written to RESULT_FILE in out_dir).
    """
    s = step(name)
    os.makedirs(out_dir, exist_ok=True)
    if s.plan_from:
        cfg = planned(cfg, inputs[s.plan_from])
    view = scoped(s, cfg)
    try:
        summary = s.run(view, inputs, out_dir)
    finally:
        if reads is not None:
            reads.update(view.reads)
    with open(os.path.join(out_dir, RESULT_FILE), "w") as f:
        json.dump(summary, f, indent=2, default=str)
    return summary
