"""Validate: blocking data checks between ingest and training.

Reads only the ingest artifact (stats.json, manifest.jsonl, quarantine.json) and writes
validation.json. Leaked images can instead be dropped from evaluation: their sha256 goes
to `exclude_from_eval`, which the data readers honour.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field

from graft.core.config import ValidateConfig
from graft.core.log import log


class ValidationFailed(RuntimeError):
    """A blocking data problem; the message names class, split or file."""


@dataclass
class ValidationResult:
    passed: bool
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    exclude_from_eval: list[str] = field(default_factory=list)
    exclude_from_all: list[str] = field(default_factory=list)


def read_manifest(examples_dir: str) -> list[dict]:
    with open(os.path.join(examples_dir, "manifest.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def validate(
    cfg: ValidateConfig, examples_dir: str, out_dir: str, raise_on_error: bool = True
) -> ValidationResult:
    """Run every check, write validation.json, then raise if any check blocks."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(examples_dir, "stats.json")) as f:
        stats = json.load(f)
    manifest = read_manifest(examples_dir)
    res = ValidationResult(passed=True)
    labels = stats["labels"]

    if len(labels) < cfg.min_classes:
        res.errors.append(f"only {len(labels)} class(es) {labels}; need at least {cfg.min_classes}")
    for empty in stats.get("empty_classes", []):
        res.warnings.append(f"class folder '{empty}' is empty and was left out of the labels")
    for split, minimum in cfg.min_per_class.items():
        for lab in labels:
            n = stats["counts"].get(split, {}).get(lab, 0)
            if n < minimum:
                res.errors.append(
                    f"class '{lab}' has {n} image(s) in split '{split}'; minimum is {minimum}"
                )

    total = stats["input_files"]
    rate = stats["quarantined"] / total if total else 0.0
    if rate > cfg.max_corrupt_rate:
        res.errors.append(
            f"{stats['quarantined']}/{total} files quarantined ({rate:.1%}) > max_corrupt_rate "
            f"{cfg.max_corrupt_rate:.1%}; see quarantine.json"
        )

    by_sha: dict[str, list[dict]] = defaultdict(list)
    for m in manifest:
        by_sha[m["sha256"]].append(m)
    for digest, group in sorted(by_sha.items()):
        splits = sorted({m["split"] for m in group})
        classes = sorted({m["label"] for m in group})
        where = "; ".join(f"{m['path']} ({m['label']}/{m['split']})" for m in group)
        if len(classes) > 1:
            if cfg.label_conflicts == "error":
                res.errors.append(f"the same image is labelled {classes}: {where}")
            else:
                res.warnings.append(
                    f"the same image is labelled {classes}: {where} -> dropped everywhere"
                )
                res.exclude_from_all.append(digest)
                continue
        if len(splits) > 1:
            msg = f"leakage: the same image (sha256 {digest[:12]}) is in splits {splits}: {where}"
            if cfg.leakage == "error":
                res.errors.append(msg)
            else:
                res.warnings.append(msg + " -> dropped from evaluation")
                res.exclude_from_eval.append(digest)

    train_counts = [stats["counts"]["train"].get(lab, 0) for lab in labels]
    if train_counts and min(train_counts) > 0:
        ratio = max(train_counts) / min(train_counts)
        if ratio > cfg.imbalance_warn_ratio:
            big = labels[train_counts.index(max(train_counts))]
            small = labels[train_counts.index(min(train_counts))]
            res.warnings.append(
                f"class imbalance {ratio:.1f}x ('{big}' vs '{small}' in train); "
                "train_head.class_weight=auto compensates"
            )

    res.passed = not res.errors
    with open(os.path.join(out_dir, "validation.json"), "w") as f:
        json.dump({**asdict(res), "labels": labels, "counts": stats["counts"]}, f, indent=2)
    for w in res.warnings:
        log(f"validate: {w}", level="warn")
    for e in res.errors:
        log(f"validate: {e}", level="error")
    if res.errors and raise_on_error:
        raise ValidationFailed("data validation failed:\n  " + "\n  ".join(res.errors))
    if res.passed:
        log(f"validate: passed ({len(res.warnings)} warning(s))", level="ok")
    return res


def _excluded(validation_dir: str | None, keys: tuple[str, ...]) -> set[str]:
    if not validation_dir:
        return set()
    path = os.path.join(validation_dir, "validation.json")
    if not os.path.exists(path):
        return set()
    with open(path) as f:
        report = json.load(f)
    return {d for k in keys for d in report.get(k, [])}


def excluded_from_eval(validation_dir: str | None) -> set[str]:
    """sha256s that validate dropped from val/test: leaked ones and label conflicts."""
    return _excluded(validation_dir, ("exclude_from_eval", "exclude_from_all"))


def excluded_from_train(validation_dir: str | None) -> set[str]:
    """sha256s that validate dropped from training: label conflicts."""
    return _excluded(validation_dir, ("exclude_from_all",))
