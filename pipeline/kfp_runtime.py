"""What runs inside a kfp component (`graft step NAME`): config from JSON, artifact paths as
step dirs, and the dashboard views that Step.artifact declares beside a step's output."""

from __future__ import annotations

import json
import os
import shutil

from graft.core.config import GraftConfig
from graft.pipeline import dag

__all__ = ["PARAMETERS", "VIEWS", "resolve_config", "run_component", "run_key"]


# The knobs a dashboard user changes per run: typed pipeline parameters -> config keys. The
# first task (resolve_config) applies them to the compiled config; every step reads its output.
PARAMETERS = {
    "data_path": "data.path",
    "push_destination": "push.destination",
    "recipe": "recipe",  # auto | seed | manual; under auto the plan sets the training keys
    "budget_minutes": "train.budget_minutes",
    "train_head_epochs": "train_head.epochs",
    "train_head_learning_rate": "train_head.learning_rate",
    "fine_tune_enabled": "fine_tune.enabled",
    "fine_tune_epochs": "fine_tune.epochs",
    "fine_tune_learning_rate": "fine_tune.learning_rate",
}


def run_component(step: dag.Step, args: dict) -> bool | None:
    """One step's component: run it into its output directory, fill the views declared
    beside that, and hand back the bool other steps' `when` reads.

    Args:
        step: the step.
        args: the component's arguments: the config, input artifacts, output artifacts.

    Returns:
        The summary's gate bool, or None for a step nothing is gated on.
    """
    output = args[dag.output_name(step)]
    inputs = {name: args[name] for name in {**step.shows, **step.inputs}}
    summary = run(step.name, args["config_json"], inputs, output, args.get("tfjob_json", ""))
    for name, out in step.artifact.items():
        if out.view:
            VIEWS[out.view](output, out.file, args[name])
    gates = dag.gate_outputs(step)
    return bool(summary[gates[0]]) if gates else None


def run_key(step: dag.Step, args: dict) -> str:
    """A step's key task: what else its output depends on (the data folder, the served
    version), computed from its config and inputs exactly as the local runner's cache does.

    Args:
        step: a step with an external_key.
        args: the key task's arguments: the config and the step's input artifacts.

    Returns:
        The key; kfp hands it to the step as its `freshness` parameter.
    """
    cfg = GraftConfig.model_validate_json(args["config_json"])
    inputs = {name: args[name].path for name in {**step.shows, **step.inputs}}
    key = dag.external_key(step, cfg, inputs) or ""
    print(f"{step.name}: freshness key {key}", flush=True)
    return key


def run(step: str, config_json: str, inputs: dict, output, tfjob_json: str = "") -> dict:
    """Run one step in this pod, or, given a compiled TFJob, on the TFJob's workers."""
    os.makedirs(output.path, exist_ok=True)
    if tfjob_json:
        from graft.pipeline.tfjob import launch

        uris = {k: a.uri for k, a in inputs.items()}
        summary = launch(step, config_json, json.loads(tfjob_json), uris, output)
    else:
        cfg = GraftConfig.model_validate_json(config_json)
        summary = dag.run_step(step, cfg, {k: a.path for k, a in inputs.items()}, output.path)
    for k, v in summary.items():
        if isinstance(v, (int, float, str, bool)):
            output.metadata[k] = v
    return summary


def _read_json(artifact, filename: str) -> dict:
    with open(os.path.join(artifact.path, filename)) as f:
        return json.load(f)


def evaluation_metrics(evaluation, filename: str, metrics) -> None:
    """Scalar Metrics of the candidate, the head-only model and the served baseline."""
    ev = _read_json(evaluation, filename)
    for prefix, key in (("", "candidate"), ("head_only_", "head_only"), ("baseline_", "baseline")):
        m = ev.get(key)
        if m:
            for name in ("accuracy", "balanced_accuracy", "macro_f1", "log_loss", "ece"):
                if name in m:  # balanced_accuracy: not in an older run's evaluation.json
                    metrics.log_metric(prefix + name, float(m[name]))
    metrics.log_metric("blessed", 1.0 if ev["blessed"] else 0.0)


def confusion(evaluation, filename: str, matrix) -> None:
    """The candidate's confusion matrix, as the dashboard draws it."""
    ev = _read_json(evaluation, filename)
    matrix.log_confusion_matrix(ev["labels"], ev["candidate"]["confusion_matrix"])


def report(evaluation, filename: str, html) -> None:
    """The HTML report, as the dashboard shows it."""
    ev = _read_json(evaluation, filename)
    shutil.copy(os.path.join(evaluation.path, ev["report"]), html.path)


def edge_models(exported, filename: str, models) -> int:
    """export.tflite's files (.tflite, labels.txt, tflite.json) as their own Model artifact,
    with each variant's size and test measurements as metadata; empty when none were asked."""
    os.makedirs(models.path, exist_ok=True)
    path = os.path.join(exported.path, filename)
    if not os.path.exists(path):
        models.metadata["variants"] = ""
        return 0
    with open(os.path.join(exported.path, "export.json")) as f:
        source = os.path.join(json.load(f)["path"], "assets.extra")
    with open(path) as f:
        edge = json.load(f)
    names = [r["file"] for r in edge["variants"]] + [edge["labels_file"], "tflite.json"]
    for name in names:
        shutil.copy(os.path.join(source, name), os.path.join(models.path, name))
    models.metadata["variants"] = ",".join(r["variant"] for r in edge["variants"])
    for r in edge["variants"]:
        for key in ("bytes", "test_accuracy", "agreement", "ms_per_image"):
            models.metadata[f"{r['variant']}_{key}"] = r[key]
    return len(edge["variants"])


def _scalars(node, prefix: str = ""):
    if isinstance(node, bool):
        yield prefix, float(node)
    elif isinstance(node, (int, float)):
        yield prefix, float(node)
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _scalars(v, f"{prefix}_{k}" if prefix else str(k))
    elif isinstance(node, list) and all(isinstance(v, dict) for v in node):
        for i, v in enumerate(node):
            name = v.get("depth") or v.get("what") or str(i)
            yield from _scalars(v, f"{prefix}_{name}".replace(" ", "_"))


def json_metrics(artifact, filename: str, metrics, limit: int = 60) -> None:
    """A step's JSON result as dashboard Metrics: every number in it, named by its path."""
    for name, value in list(_scalars(_read_json(artifact, filename)))[:limit]:
        metrics.log_metric(name, value)


# Step.artifact's views: name -> fill(the step's output directory, its file, the view artifact)
VIEWS = {
    "json_metrics": json_metrics,
    "evaluation_metrics": evaluation_metrics,
    "confusion": confusion,
    "report": report,
    "edge_models": edge_models,
}


def resolve_config(config_json: str, parameters: dict) -> str:
    """The config a run's steps see: the compiled config with the dashboard's
    parameters applied (validated here, so a bad value fails this first, cheap step with the
    key named).

    A parameter changed from the compiled config's value joins `advise.keep`, so that under
    `recipe: auto` the plan keeps it (and says what it would have chosen) instead of replacing
    it; a parameter left at its default is not the user's setting.

    Args:
        config_json: the config compiled into the pipeline, as JSON.
        parameters: the run's parameters (PARAMETERS), None where not given.

    Returns:
        The resolved config, as JSON.
    """
    from graft.core.config import apply_overrides, parse_config

    raw = json.loads(config_json)
    compiled = dag.section_values(parse_config(raw), tuple(PARAMETERS.values()))
    given = {
        PARAMETERS[name]: v
        for name, v in sorted(parameters.items())
        if v != ""  # empty: keep the compiled config's value
    }
    changed = sorted(k for k, v in given.items() if v != compiled[k])
    overrides = [f"{k}={json.dumps(v)}" for k, v in given.items()]
    cfg = parse_config(apply_overrides(raw, overrides))
    keep = sorted(set(cfg.advise.keep) | {k for k in changed if k != "recipe"})
    if keep != list(cfg.advise.keep):
        cfg = parse_config(apply_overrides(cfg.to_dict(), [f"advise.keep={json.dumps(keep)}"]))
    return json.dumps(cfg.to_dict(), sort_keys=True)
