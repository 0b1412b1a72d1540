"""THE pipeline definition: the steps, what each reads and the config it depends on.

Written once. The local runner walks STEPS in order; the Kubeflow builder turns the same
list into a kfp pipeline. Each step's `run` adapts the config + input dirs to the plain
component function and returns a small JSON-able summary.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.config import GraftConfig

StepFn = Callable[[GraftConfig, dict[str, str], str], dict[str, Any]]


@dataclass(frozen=True)
class Step:
    name: str
    inputs: dict[str, str]  # input name -> the step whose output it is
    sections: tuple[str, ...]  # config sections (dotted paths) that key the cache
    artifact: str  # kfp artifact type of the output: Dataset, Artifact, Model, Metrics
    run: StepFn
    doc: str = ""
    cacheable: bool = True
    gpu_capable: bool = False
    external_key: Callable[[GraftConfig, dict[str, str]], str] | None = field(default=None, compare=False)


# ----------------------------------------------------------------- step adapters


def _ingest(cfg: GraftConfig, inputs: dict[str, str], out: str) -> dict:
    from components.ingest import ingest

    r = ingest(cfg.data, out)
    return {"written": r.written, "quarantined": r.quarantined, "input_files": r.input_files,
            "labels": r.labels}


def _validate(cfg: GraftConfig, inputs: dict[str, str], out: str) -> dict:
    from components.validate import validate

    r = validate(cfg.validate_, inputs["examples"], out)
    return {"passed": r.passed, "warnings": len(r.warnings), "excluded_from_eval": len(r.exclude_from_eval)}


def _train_head(cfg: GraftConfig, inputs: dict[str, str], out: str) -> dict:
    from components.train import train_head

    r = train_head(inputs["examples"], out, base=cfg.base, head=cfg.head, train=cfg.train,
                   cfg=cfg.train_head, augment=cfg.augment, image_size=cfg.data.image_size,
                   validation_dir=inputs["validation"])
    return {"val_accuracy": r.best_val_accuracy, "epochs": r.epochs_run, "cache_used": r.cache_used,
            "seconds": r.seconds}


def _fine_tune(cfg: GraftConfig, inputs: dict[str, str], out: str) -> dict:
    from components.train import fine_tune

    r = fine_tune(inputs["examples"], inputs["head_model"], out, train=cfg.train, cfg=cfg.fine_tune,
                  augment=cfg.augment, image_size=cfg.data.image_size, validation_dir=inputs["validation"])
    return {"val_accuracy": r.best_val_accuracy, "epochs": r.epochs_run, "guard": r.extra.get("guard"),
            "seconds": r.seconds}


def _evaluate(cfg: GraftConfig, inputs: dict[str, str], out: str) -> dict:
    from components.evaluate import evaluate

    r = evaluate(inputs["examples"], inputs["head_model"], inputs["model"], out, cfg=cfg.evaluate,
                 push=cfg.push, model_name=cfg.export.model_name, image_size=cfg.data.image_size,
                 validation_dir=inputs["validation"], flip_average=cfg.export.flip_average)
    return {"blessed": r["blessed"], "reasons": r["reasons"],
            "accuracy": r["candidate"]["accuracy"], "head_accuracy": r["head_only"]["accuracy"],
            "baseline_accuracy": (r.get("baseline") or {}).get("accuracy")}


def _export(cfg: GraftConfig, inputs: dict[str, str], out: str) -> dict:
    from components.export import export

    r = export(inputs["model"], inputs["examples"], inputs["evaluation"], out, cfg=cfg.export,
               image_size=cfg.data.image_size, config=cfg)
    return {"version": r["version"], "path": r["path"], "parity_max_abs_diff": r["parity_max_abs_diff"]}


def _push(cfg: GraftConfig, inputs: dict[str, str], out: str) -> dict:
    from components.push import push

    return push(inputs["exported"], inputs["evaluation"], out, cfg=cfg.push, model_name=cfg.export.model_name)


def _baseline_key(cfg: GraftConfig, inputs: dict[str, str]) -> str:
    """Evaluation depends on what is served now: the newest version that is not this model."""
    from components.push import baseline_version, file_sha256

    cand = os.path.join(inputs["model"], "model.keras")
    sha = file_sha256(cand) if os.path.exists(cand) else None
    return str(baseline_version(cfg.push.destination, cfg.export.model_name, sha))


STEPS: list[Step] = [
    Step("ingest", {}, ("data",), "Dataset", _ingest, "Beam: images -> TFRecords, labels, stats, quarantine"),
    Step("validate", {"examples": "ingest"}, ("validate",), "Artifact", _validate,
         "blocking data checks: classes, counts, corrupt rate, leakage"),
    Step("train_head", {"examples": "ingest", "validation": "validate"},
         ("data.image_size", "base", "head", "train", "train_head", "augment"), "Model", _train_head,
         "new head on the frozen base (bottleneck cache)", gpu_capable=True),
    Step("fine_tune", {"examples": "ingest", "validation": "validate", "head_model": "train_head"},
         ("data.image_size", "train", "fine_tune", "augment"), "Model", _fine_tune,
         "unfreeze the top of the base at a low LR, guarded", gpu_capable=True),
    Step("evaluate", {"examples": "ingest", "validation": "validate", "head_model": "train_head",
                      "model": "fine_tune"},
         ("data.image_size", "evaluate", "push.destination", "export.model_name", "export.flip_average"),
         "Metrics", _evaluate,
         "test metrics, plots, report, blessing vs the served baseline", external_key=_baseline_key),
    Step("export", {"model": "fine_tune", "examples": "ingest", "evaluation": "evaluate"},
         ("data.image_size", "export", "base"), "Model", _export,
         "SavedModel for TF Serving with in-graph preprocessing, warmup, model card"),
    Step("push", {"exported": "export", "evaluation": "evaluate"}, ("push", "export.model_name"), "Artifact",
         _push, "atomic copy to the serving destination, only when blessed", cacheable=False),
]
STEP_NAMES: list[str] = [s.name for s in STEPS]


def step(name: str) -> Step:
    for s in STEPS:
        if s.name == name:
            return s
    raise KeyError(f"unknown step '{name}'; steps: {', '.join(STEP_NAMES)}")


def section_values(cfg: GraftConfig, sections: tuple[str, ...]) -> dict[str, Any]:
    full = cfg.to_dict()
    out = {}
    for dotted in sections:
        node: Any = full
        for part in dotted.split("."):
            node = node[part]
        out[dotted] = node
    return out


RESULT_FILE = "_step_result.json"


def run_step(name: str, cfg: GraftConfig, inputs: dict[str, str], out_dir: str) -> dict[str, Any]:
    """Run one step into out_dir and record its summary beside its outputs."""
    os.makedirs(out_dir, exist_ok=True)
    summary = step(name).run(cfg, inputs, out_dir)
    with open(os.path.join(out_dir, RESULT_FILE), "w") as f:
        json.dump(summary, f, indent=2, default=str)
    return summary


def describe() -> list[dict[str, Any]]:
    return [{k: v for k, v in asdict(s).items() if k not in ("run", "external_key")} for s in STEPS]
