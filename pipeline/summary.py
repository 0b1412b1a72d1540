"""The end-of-run table: what was trained, how good, blessed or not, and how to serve it."""

from __future__ import annotations

import json
import os

from rich.console import Console
from rich.table import Table

from graft.core.config import GraftConfig

__all__ = ["print_summary", "push_outcome", "quality_table"]


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


def _plain(console: Console, text: str) -> None:
    console.print(text, soft_wrap=True, highlight=False, markup=False)


def _evaluation(record: dict | None) -> dict:
    """evaluation.json of the run's evaluate step ({} when it did not run)."""
    path = os.path.join((record or {}).get("output") or "", "evaluation.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _with_interval(v: list | None) -> str:
    """A [value, low, high] as '0.812 [0.770, 0.850]'; '-' when not recorded."""
    return f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]" if v and len(v) == 3 else "-"


def quality_table(record: dict | None) -> Table:
    """Each model's test accuracy with its 95% interval (Wilson), its balanced accuracy and
    macro-F1 with theirs (bootstrap), and the number of test images.

    Args:
        record: the run record's evaluate step (its summary and output folder), or None.

    Returns:
        The table: head only, the candidate (fine-tuned, or a head refit on train + val) when
        it differs from the head, and the served baseline.
    """
    ev = (record or {}).get("summary") or {}
    evaluation = _evaluation(record)
    intervals = evaluation.get("intervals") or {}
    t = Table(title="model quality (test split)")
    t.add_column("model", justify="left")
    for col in ("accuracy", "95% interval", "balanced acc. [95%]", "macro-F1 [95%]", "n"):
        t.add_column(col, justify="right")
    rows = (
        ("head only (frozen base)", "head_only", "head_accuracy"),
        ("fine-tuned (candidate)", "candidate", "accuracy"),
        ("served baseline", "baseline", "baseline_accuracy"),
    )
    if evaluation.get("refit") and not ev.get("fine_tuned", True):  # a refit head shipped
        rows = (
            ("head on train, early-stopped on val (not shipped)", "head_only", "head_accuracy"),
            (f"{evaluation.get('shipped')} (candidate)", "candidate", "accuracy"),
            rows[2],
        )
    elif not ev.get("fine_tuned", True):  # the head is the candidate: one row
        why = (
            "the guard kept it over the fine-tuned model"
            if evaluation.get("fine_tune_rejected")
            else "no fine-tuning ran"
        )
        rows = (
            (f"head only (candidate; {why})", "head_only", "head_accuracy"),
            rows[2],
        )
    for label, key, summary_key in rows:
        iv = intervals.get(key) or {}
        acc = iv.get("accuracy") or [ev.get(summary_key)]
        ci = f"[{acc[1]:.3f}, {acc[2]:.3f}]" if len(acc) == 3 else "-"
        balanced = [_with_interval(iv.get(k)) for k in ("balanced_accuracy", "macro_f1")]
        t.add_row(label, _fmt(acc[0]), ci, *balanced, str(iv["n"]) if "n" in iv else "-")
    return t


def push_outcome(run: dict) -> tuple[str | None, bool]:
    """The push line of the summary, and whether the model is now at the destination.

    "pushed:" only when this run copied a version there; otherwise "not pushed:" and why.

    Args:
        run: the run record.

    Returns:
        (the line, or None when push was not reached; whether the model is there).
    """
    rec = run["steps"].get("push")
    if rec is None:
        failed = [n for n, r in run["steps"].items() if r.get("status") == "failed"]
        return (f"not pushed: the run failed at {failed[0]}", False) if failed else (None, False)
    push = rec.get("summary") or {}
    if push.get("pushed"):
        return f"pushed: {push['destination']} (version {push['version']})", True
    if push.get("already_at_destination"):
        return (
            f"not pushed: the same model is already at {push['destination']} "
            f"(version {push['version']}); nothing copied",
            True,
        )
    if rec.get("status") == "skipped" and push.get("reason"):  # its `when`: evaluate.blessed
        ev = run["steps"].get("evaluate", {}).get("summary") or {}
        reasons = "; ".join(ev.get("reasons") or []) or push["reason"]
        return f"not pushed: not blessed ({reasons}); --force pushes anyway", False
    if rec.get("status") == "failed":
        return f"not pushed: the push step failed ({rec.get('error') or 'see the log'})", False
    if rec.get("status") in ("skipped", "cached", "pending"):
        return "not pushed: push was not part of this run (--only)", False
    return "not pushed: " + ("; ".join(push.get("reasons") or []) or "push declined"), False


def _output_text(rec: dict) -> str:
    """A step's output directory; for a step that did not run, why (it wrote nothing)."""
    if rec["status"] != "skipped":
        return rec["output"] or ""
    why = (rec.get("summary") or {}).get("reason")
    return f"not run: {why}" if why else "not run"


def export_outcome(run: dict) -> str | None:
    """The export line of the summary when its `when` (evaluate.blessed) held it back."""
    rec = run["steps"].get("export") or {}
    why = (rec.get("summary") or {}).get("reason")
    if rec.get("status") != "skipped" or not why:
        return None
    return f"not exported: {why} (only a blessed candidate is exported; --force exports it)"


def print_summary(run: dict, cfg: GraftConfig) -> None:
    """The end-of-run summary on stderr: each step's status, time and output, what
    was pushed or why not, and where the report is.

    Args:
        run: the run record.
        cfg: the config the run used.
    """
    console = Console(stderr=True)
    steps = run["steps"]
    t = Table(title=f"graft run {run['run_id']} ({run['status']}, {run['seconds']:.0f}s)")
    for col in ("step", "status", "seconds", "output"):
        t.add_column(col, overflow="fold")  # whole paths, wrapped, never cut with an ellipsis
    for name, rec in steps.items():
        t.add_row(name, rec["status"], f"{rec['seconds']:.1f}", _output_text(rec))
    console.print(t)
    ev = steps.get("evaluate", {}).get("summary", {})
    console.print(quality_table(steps.get("evaluate")))
    edge = steps.get("export", {}).get("summary", {}).get("tflite")
    if edge:  # export.tflite: the evaluate report is written before export, so they show here
        e = Table(title="edge models (TFLite, test split, 1 thread)")
        for col in ("variant", "MB", "accuracy", "top-1 = SavedModel", "ms/image"):
            e.add_column(col)
        for r in edge:
            e.add_row(
                r["variant"],
                f"{r['bytes'] / 1e6:.2f}",
                _fmt(r["test_accuracy"]),
                _fmt(r["agreement"]),
                f"{r['ms_per_image']:.2f}",
            )
        console.print(e)
    if ev:
        console.print(
            ("[green]BLESSED[/green]" if ev.get("blessed") else "[yellow]NOT BLESSED[/yellow]")
            + ": "
            + "; ".join(ev.get("reasons", []))
        )
    # soft_wrap: long paths and commands stay whole (the terminal wraps them; copy-paste works)
    report = os.path.join(run["run_dir"], "evaluate", "report.html")
    if os.path.exists(report):
        _plain(console, f"report: {report}")
    export_line = export_outcome(run)
    if export_line:
        _plain(console, export_line)
    push_line, at_destination = push_outcome(run)
    if push_line:
        _plain(console, push_line)
    if at_destination:
        base = f"{cfg.push.destination}/{cfg.export.model_name}"
        _plain(console, f"predict:   graft predict --model-dir {base} IMAGES_OR_FOLDER")
        _plain(
            console,
            f"serve it:  graft serve --model-base-path {base} --model-name "
            f"{cfg.export.model_name} --port 8500 --rest-port 8501",
        )
    console.print(
        f"run record: {run['run_dir']}/run.json", soft_wrap=True, highlight=False, markup=False
    )
    if run.get("config_file"):
        console.print(
            f"config: {run['config_file']}",
            soft_wrap=True,
            highlight=False,
            markup=False,
        )
