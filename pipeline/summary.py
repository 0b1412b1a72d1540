"""The end-of-run table: what was trained, how good, blessed or not, and how to serve it."""

from __future__ import annotations

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
        t.add_column(col)
    for name, rec in steps.items():
        t.add_row(name, rec["status"], f"{rec['seconds']:.1f}", rec["output"] or "")
    console.print(t)
    ev = steps.get("evaluate", {}).get("summary", {})
    push = steps.get("push", {}).get("summary", {})
    m = Table(title="model quality (test split)")
    m.add_column("model")
    m.add_column("accuracy")
    m.add_row("head only (frozen base)", _fmt(ev.get("head_accuracy")))
    m.add_row("fine-tuned (candidate)", _fmt(ev.get("accuracy")))
    m.add_row("served baseline", _fmt(ev.get("baseline_accuracy")))
    console.print(m)
    if ev:
        console.print(
            ("[green]BLESSED[/green]" if ev.get("blessed") else "[yellow]NOT BLESSED[/yellow]")
            + ": "
            + "; ".join(ev.get("reasons", []))
        )
    if push.get("pushed") or push.get("already_at_destination"):
        console.print(f"pushed: {push['destination']}")
        console.print(
            "serve it:  graft serve --model-base-path "
            f"{cfg.push.destination}/{cfg.export.model_name} --model-name {cfg.export.model_name}"
        )
        console.print(
            "query it:  graft predict --server 127.0.0.1:8500 --model "
            f"{cfg.export.model_name} IMAGE.jpg"
        )
    elif push:
        console.print("not pushed (use --force to push anyway)")
    console.print(f"run record: {run['run_dir']}/run.json")
