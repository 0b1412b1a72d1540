"""Validate: blocking data checks between ingest and training.

Reads only the ingest artifact (stats.json, manifest.jsonl, quarantine.json) and writes
validation.json. Leaked images can instead be dropped from evaluation: their sha256 goes
to `exclude_from_eval`, which the data readers honour.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import numpy as np

from graft.components.manifest import read_manifest
from graft.core.config import ValidateConfig
from graft.core.log import log

__all__ = ["ValidationFailed", "ValidationResult", "validate"]


class ValidationFailed(RuntimeError):
    """A blocking data problem; the message names class, split or file."""


@dataclass
class ValidationResult:
    """What validate found: blocking errors, warnings, and the images to leave out of
    evaluation (leaked copies) or of everything; written as validation.json."""

    passed: bool
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    exclude_from_eval: list[str] = field(default_factory=list)
    exclude_from_all: list[str] = field(default_factory=list)
    near_duplicates: list[dict] = field(default_factory=list)  # train image ~ val/test image
    crossing_groups: dict[str, list[str]] = field(default_factory=dict)  # group -> its splits
    # exact copies within one split: split -> groups, images in them, extra copies, and the
    # largest groups (sha256, label, count, paths)
    duplicates: dict[str, dict] = field(default_factory=dict)


MAX_LISTED = 200  # pairs and groups listed in validation.json; the counts are always whole
EVAL_SPLITS = ("val", "test")


def interval_halfwidth(n: int) -> float:
    """Worst-case (p = 0.5) half-width of a 95% interval on an accuracy measured on n images."""
    return 1.96 * math.sqrt(0.25 / n) if n else 1.0


def _grid(m: dict) -> np.ndarray:
    return np.frombuffer(bytes.fromhex(m["grid"]), dtype=np.uint8).astype(np.int16)


def find_near_duplicates(manifest: list[dict], max_bits: int, max_colour: float) -> list[dict]:
    """Val/test images that look like a train image: difference hash within max_bits and 4x4
    block colours within max_colour (mean absolute difference, 0-255).

    Exact copies (same sha256) are the leakage check's; this finds re-encoded, resized or
    lightly edited copies that sha256 cannot see.
    """
    train = [m for m in manifest if m["split"] == "train" and m.get("dhash") and m.get("grid")]
    if not train:
        return []
    hashes = np.array([int(m["dhash"], 16) for m in train], dtype=np.uint64)
    grids = np.stack([_grid(m) for m in train])
    pairs = []
    for m in manifest:
        if m["split"] not in EVAL_SPLITS or not m.get("dhash") or not m.get("grid"):
            continue
        bits = np.bitwise_count(hashes ^ np.uint64(int(m["dhash"], 16)))
        close = np.flatnonzero(bits <= max_bits)
        colour = np.abs(grids[close] - _grid(m)).mean(axis=1) if len(close) else []
        for i, c in zip(close, colour, strict=True):
            t = train[i]
            if t["sha256"] != m["sha256"] and c <= max_colour:
                pairs.append(
                    {
                        "eval_path": m["path"],
                        "eval_split": m["split"],
                        "eval_label": m["label"],
                        "eval_sha256": m["sha256"],
                        "train_path": t["path"],
                        "train_label": t["label"],
                        "bits": int(bits[i]),
                        "colour": round(float(c), 2),
                    }
                )
    return sorted(pairs, key=lambda p: (p["bits"], p["eval_path"]))


def crossing_groups(manifest: list[dict], key: str) -> dict[str, list[str]]:
    """Groups (by manifest field `key`) whose images sit in more than one split."""
    splits: dict[str, set[str]] = defaultdict(set)
    for m in manifest:
        if m.get(key):
            splits[m[key]].add(m["split"])
    return {g: sorted(s) for g, s in sorted(splits.items()) if len(s) > 1}


def validate(
    cfg: ValidateConfig, examples_dir: str, out_dir: str, raise_on_error: bool = True
) -> ValidationResult:
    """Run every check, write validation.json, then raise if any check blocks.

    Reads only the ingest artifact, so a bad dataset stops here, before any training.

    Args:
        cfg: the `validate` config section (thresholds, which checks block).
        examples_dir: the ingest step's output (stats.json, manifest.jsonl).
        out_dir: where validation.json is written.
        raise_on_error: raise on a blocking problem; False returns it in the result.

    Returns:
        The ValidationResult, also written to `out_dir`/validation.json.

    Raises:
        ValidationFailed: a check blocks and `raise_on_error` is set; the message lists them.
    """
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(examples_dir, "stats.json")) as f:
        stats = json.load(f)
    manifest = read_manifest(examples_dir)
    res = ValidationResult(passed=True)
    labels = stats["labels"]

    _check_class_counts(cfg, stats, labels, res)
    _check_corrupt_rate(cfg, stats, res)
    by_sha: dict[str, list[dict]] = defaultdict(list)
    for m in manifest:
        by_sha[m["sha256"]].append(m)
    _check_same_image(cfg, by_sha, res)
    _check_exact_duplicates(by_sha, res)
    _check_groups(cfg, stats, manifest, res)
    _check_near_duplicates(cfg, manifest, res)
    _check_small_splits(cfg, stats, labels, res)
    _check_imbalance(cfg, stats, labels, res)

    res.passed = not res.errors
    # one image can be excluded by several checks (leaked, grouped, near-duplicate): counted once
    res.exclude_from_eval = list(dict.fromkeys(res.exclude_from_eval))
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


def _check_class_counts(cfg: ValidateConfig, stats: dict, labels: list[str], res) -> None:
    """Enough classes, and enough images of each class in each split; empty folders named."""
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


def _check_corrupt_rate(cfg: ValidateConfig, stats: dict, res) -> None:
    """Too many files quarantined: the data source itself is suspect."""
    total = stats["input_files"]
    rate = stats["quarantined"] / total if total else 0.0
    if rate > cfg.max_corrupt_rate:
        res.errors.append(
            f"{stats['quarantined']}/{total} files quarantined ({rate:.1%}) > max_corrupt_rate "
            f"{cfg.max_corrupt_rate:.1%}; see quarantine.json"
        )


def _check_same_image(cfg: ValidateConfig, by_sha: dict[str, list[dict]], res) -> None:
    """One image (by sha256) under two labels (a conflict) or in two splits (leakage): an
    error, or as configured dropped everywhere / from evaluation."""
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


def _check_imbalance(cfg: ValidateConfig, stats: dict, labels: list[str], res) -> None:
    """A warning when the largest class has imbalance_warn_ratio times the smallest's images."""
    train_counts = [stats["counts"]["train"].get(lab, 0) for lab in labels]
    if train_counts and min(train_counts) > 0:
        ratio = max(train_counts) / min(train_counts)
        if ratio > cfg.imbalance_warn_ratio:
            big = labels[train_counts.index(max(train_counts))]
            small = labels[train_counts.index(min(train_counts))]
            res.warnings.append(
                f"class imbalance {ratio:.1f}x ('{big}' vs '{small}' in train); "
                "train_head.class_weight weighs the classes (recipe auto probes it over 3:1)"
            )


def _check_exact_duplicates(by_sha: dict[str, list[dict]], res) -> None:
    """The same bytes stored more than once in one split: each copy trains (or is scored) as
    one more image, so 40 copies of one black image weigh 40 times. Reported, not blocking."""
    per_split: dict[str, list[list[dict]]] = defaultdict(list)
    for group in by_sha.values():
        by_split: dict[str, list[dict]] = defaultdict(list)
        for m in group:
            by_split[m["split"]].append(m)
        for split, copies in by_split.items():
            if len(copies) > 1:
                per_split[split].append(copies)
    for split in sorted(per_split):
        groups = sorted(per_split[split], key=lambda g: (-len(g), g[0]["sha256"]))
        images = sum(len(g) for g in groups)
        res.duplicates[split] = {
            "groups": len(groups),
            "images": images,
            "extra_copies": images - len(groups),
            "largest": [
                {
                    "sha256": g[0]["sha256"],
                    "label": g[0]["label"],
                    "count": len(g),
                    "paths": [m["path"] for m in g[:5]],
                }
                for g in groups[:MAX_LISTED]
            ],
        }
        top = groups[0]
        res.warnings.append(
            f"exact duplicates in {split}: {len(groups)} image(s) stored more than once, "
            f"{images} files in all ({images - len(groups)} extra copies); the largest: "
            f"{len(top)} copies of sha256 {top[0]['sha256'][:12]} in class '{top[0]['label']}' "
            f"(e.g. {top[0]['path']}); see validation.json duplicates"
        )


def _check_groups(cfg: ValidateConfig, stats: dict, manifest: list[dict], res) -> None:
    """A group (patient, ...) in two splits leaks: its val/test images are not unseen."""
    crossing = crossing_groups(manifest, "group")
    if crossing:
        leaked = [m for m in manifest if m.get("group") in crossing and m["split"] in EVAL_SPLITS]
        msg = (
            f"leakage: {len(crossing)} group(s) of data.group_by '{stats.get('group_by')}' have "
            f"images in several splits ({len(leaked)} val/test images), e.g. "
            + ", ".join(f"{g} {s}" for g, s in list(crossing.items())[:5])
        )
        if cfg.leakage == "error":
            res.errors.append(msg + "; see crossing_groups in validation.json")
        else:
            res.warnings.append(msg + " -> their val/test images dropped from evaluation")
            res.exclude_from_eval += sorted({m["sha256"] for m in leaked})
    hint = stats.get("group_hint")
    if hint and not stats.get("group_by"):
        crossing = crossing_groups(manifest, "group_hint")
        if crossing:
            n = sum(
                1 for m in manifest if m.get("group_hint") in crossing and m["split"] in EVAL_SPLITS
            )
            res.warnings.append(
                f"possible leakage: column '{hint}' looks like a group, and {len(crossing)} of its "
                f"values have images in several splits ({n} val/test images share a {hint} with "
                f"train); set data.group_by: {hint} to keep each {hint} in one split"
            )
    res.crossing_groups = dict(list(crossing.items())[:MAX_LISTED])


def _check_near_duplicates(cfg: ValidateConfig, manifest: list[dict], res) -> None:
    if cfg.near_duplicates == "off":
        return
    pairs = find_near_duplicates(manifest, cfg.near_duplicate_bits, cfg.near_duplicate_colour)
    res.near_duplicates = pairs[:MAX_LISTED]
    if not pairs:
        return
    shown = "; ".join(f"{p['eval_path']} ~ {p['train_path']} ({p['bits']} bits)" for p in pairs[:3])
    msg = (
        f"{len(pairs)} near-duplicate pair(s) between train and val/test (difference hash within "
        f"{cfg.near_duplicate_bits} bits, block colours within {cfg.near_duplicate_colour:g}), "
        f"e.g. {shown}; all in validation.json"
    )
    if cfg.near_duplicates == "error":
        res.errors.append(msg)
    elif cfg.near_duplicates == "drop_from_eval":
        res.warnings.append(msg + " -> their val/test copies dropped from evaluation")
        res.exclude_from_eval += sorted({p["eval_sha256"] for p in pairs})
    else:
        res.warnings.append(msg + " (validate.near_duplicates: drop_from_eval or error to act)")


def _check_small_splits(cfg: ValidateConfig, stats: dict, labels: list[str], res) -> None:
    """Few val/test images make noisy numbers: say how noisy."""
    for split in EVAL_SPLITS:
        counts = stats["counts"].get(split, {})
        small = [
            (lab, counts.get(lab, 0))
            for lab in labels
            if 0 < counts.get(lab, 0) < cfg.small_split_warn
        ]
        if small:
            shown = ", ".join(f"'{lab}' {n} (±{interval_halfwidth(n):.0%})" for lab, n in small[:8])
            if len(small) > 8:
                shown += f" and {len(small) - 8} more"
            total = sum(counts.values())
            res.warnings.append(
                f"small {split} split: {len(small)} class(es) under {cfg.small_split_warn} images "
                f"({shown} per-class accuracy, 95% worst case); all {total} {split} images give "
                f"±{interval_halfwidth(total):.0%} on accuracy"
            )
