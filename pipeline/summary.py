"""The end-of-run table: what was trained, how good, blessed or not, and how to serve it."""

from __future__ import annotations

import os

from rich.console import Console
from rich.table import Table

from graft.core.config import GraftConfig


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


def print_summary(run: dict, cfg: GraftConfig) -> None:
    console = Console(stderr=True)
    steps = run["steps"]
    t = Table(title=f"graft run {run['run_id']} ({run['status']}, {run['seconds']:.0f}s)")
    for col in ("step", "status", "seconds", "output"):
        t.add_column(col, overflow="fold")  # whole paths, wrapped, never cut with an ellipsis
    for name, rec in steps.items():
        t.add_row(name, rec["status"], f"{rec['seconds']:.1f}", rec["output"] or "")
    console.print(t)
    ev = steps.get("evaluate", {}).get("summary", {})
    push = steps.get("push", {}).get("summary", {})
    m = Table(title="model quality (test split)")
    m.add_column("model")
    m.add_column("accuracy")
    if ev.get("fine_tuned", True):
        m.add_row("head only (frozen base)", _fmt(ev.get("head_accuracy")))
        m.add_row("fine-tuned (candidate)", _fmt(ev.get("accuracy")))
    else:  # no fine-tuning ran: the head is the candidate, one row
        m.add_row("head only (candidate; no fine-tuning ran)", _fmt(ev.get("accuracy")))
    m.add_row("served baseline", _fmt(ev.get("baseline_accuracy")))
    console.print(m)
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
        console.print(f"report: {report}", soft_wrap=True, highlight=False, markup=False)
    if push.get("pushed") or push.get("already_at_destination"):
        base = f"{cfg.push.destination}/{cfg.export.model_name}"
        console.print(
            f"pushed: {push['destination']}", soft_wrap=True, highlight=False, markup=False
        )
        console.print(
            f"predict:   graft predict --model-dir {base} IMAGES_OR_FOLDER",
            soft_wrap=True,
            highlight=False,
            markup=False,
        )
        console.print(
            f"serve it:  graft serve --model-base-path {base} --model-name {cfg.export.model_name}",
            soft_wrap=True,
            highlight=False,
            markup=False,
        )
    elif push:
        console.print("not pushed (use --force to push anyway)")
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
