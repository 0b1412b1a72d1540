"""What runs inside a kfp component: config from JSON, artifact paths as step dirs."""

from __future__ import annotations

import json
import os
import shutil

from graft.core.config import GraftConfig
from graft.pipeline import dag

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


def log_evaluation(evaluation, metrics, confusion, report) -> bool:
    """Dashboard artifacts: scalar Metrics, the confusion matrix, the HTML report."""
    with open(os.path.join(evaluation.path, "evaluation.json")) as f:
        ev = json.load(f)
    for prefix, key in (("", "candidate"), ("head_only_", "head_only"), ("baseline_", "baseline")):
        m = ev.get(key)
        if m:
            for name in ("accuracy", "macro_f1", "log_loss", "ece"):
                metrics.log_metric(prefix + name, float(m[name]))
    metrics.log_metric("blessed", 1.0 if ev["blessed"] else 0.0)
    confusion.log_confusion_matrix(ev["labels"], ev["candidate"]["confusion_matrix"])
    shutil.copy(os.path.join(evaluation.path, ev["report"]), report.path)
    return bool(ev["blessed"])  # the output push's `when` reads


def log_edge_models(exported, edge_models) -> int:
    """export.tflite's files (.tflite, labels.txt, tflite.json) as their own Model artifact,
    with each variant's size and test measurements as metadata; empty when none were asked."""
    os.makedirs(edge_models.path, exist_ok=True)
    path = os.path.join(exported.path, "tflite.json")
    if not os.path.exists(path):
        edge_models.metadata["variants"] = ""
        return 0
    with open(os.path.join(exported.path, "export.json")) as f:
        source = os.path.join(json.load(f)["path"], "assets.extra")
    with open(path) as f:
        edge = json.load(f)
    names = [r["file"] for r in edge["variants"]] + [edge["labels_file"], "tflite.json"]
    for name in names:
        shutil.copy(os.path.join(source, name), os.path.join(edge_models.path, name))
    edge_models.metadata["variants"] = ",".join(r["variant"] for r in edge["variants"])
    for r in edge["variants"]:
        for key in ("bytes", "test_accuracy", "agreement", "ms_per_image"):
            edge_models.metadata[f"{r['variant']}_{key}"] = r[key]
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


def log_json_metrics(artifact, filename: str, metrics, limit: int = 60) -> None:
    """A step's JSON result as dashboard Metrics: every number in it, named by its path."""
    with open(os.path.join(artifact.path, filename)) as f:
        data = json.load(f)
    for name, value in list(_scalars(data))[:limit]:
        metrics.log_metric(name, value)


def resolve_config(config_json: str, parameters: dict) -> str:
    """The config a run's steps see: the compiled config with the dashboard's parameters applied
    (validated here, so a bad value fails this first, cheap step with the key named)."""
    from graft.core.config import apply_overrides, parse_config

    raw = json.loads(config_json)
    overrides = [
        f"{PARAMETERS[name]}={json.dumps(v)}"
        for name, v in sorted(parameters.items())
        if v != ""  # empty: keep the compiled config's value
    ]
    return json.dumps(parse_config(apply_overrides(raw, overrides)).to_dict(), sort_keys=True)
