"""`graft` command line: argparse subcommands over the pipeline and components."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from pathlib import Path

__all__ = [
    "advise_config",
    "build_parser",
    "main",
    "parse_args",
    "photos_template",
    "run_row",
    "train_overrides",
]


_TF_LEVEL_GIVEN = "TF_CPP_MIN_LOG_LEVEL" in os.environ
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Beam workers and servers inherit it

from graft.core.backbones import BACKBONES  # noqa: E402
from graft.core.config import (  # noqa: E402
    RUN_RECORD,
    ConfigError,
    GraftConfig,
    dump_yaml,
    load_config,
)
from graft.core.log import log  # noqa: E402
from graft.core.log import setup as log_setup  # noqa: E402
from graft.core.paths import demo_weights  # noqa: E402
from graft.core.quiet import (  # noqa: E402
    VERBOSE_ENV,
    import_tensorflow_quietly,
    native_stderr_filtered,
    verbose,
)
from graft.pipeline.dag import STEP_NAMES  # noqa: E402
from graft.serving import options as serve_options  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def _quiet_libraries() -> None:
    """Graft prints its own progress; library chatter only with -v (or GRAFT_DEBUG=1)."""
    if verbose():
        return
    logging.getLogger().setLevel(logging.ERROR)
    for name in ("apache_beam", "absl", "tensorflow", "kfp", "matplotlib"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import warnings

    warnings.filterwarnings("ignore", module="keras")
    try:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.WARNING)
    except ImportError:
        pass


def _config(args, defaults: dict | None = None) -> GraftConfig:
    return load_config(getattr(args, "config", None), getattr(args, "set", None) or [], defaults)


def _add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", "-c", required=required, help="YAML config (see configs/)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        default=[],
        help="override a config key, e.g. --set fine_tune.learning_rate=3e-4 (repeatable)",
    )


_BACKBONE_HELP = "backbone: " + ", ".join(sorted(BACKBONES))


def _add_run_args(p: argparse.ArgumentParser) -> None:
    steps = ", ".join(STEP_NAMES)
    p.add_argument("--no-cache", action="store_true", help="re-run every step")
    p.add_argument(
        "--only", metavar="STEP", choices=STEP_NAMES, help=f"run just this step: {steps}"
    )
    p.add_argument(
        "--from",
        dest="from_step",
        metavar="STEP",
        choices=STEP_NAMES,
        help=f"re-run from this step on: {steps}",
    )
    p.add_argument("--force", action="store_true", help="export and push even if not blessed")
    p.add_argument(
        "--run-id", help="name of the run's folder under runner.run_root (default: a timestamp)"
    )


def _hidden_alias(p: argparse.ArgumentParser, old: str, dest: str, **kw) -> None:
    """An old spelling that still works but is no longer shown: one spelling per idea."""
    p.add_argument(old, dest=dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kw)


def _add_model_name_arg(p: argparse.ArgumentParser, help: str, *old: str) -> None:
    """--model-name NAME everywhere a command names a model (--model, --name: hidden)."""
    p.add_argument("--model-name", metavar="NAME", help=help)
    for spelling in old:
        _hidden_alias(p, spelling, "model_name", metavar="NAME")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    """What `graft train` and `graft advise DATA_DIR` both take: the same words, same keys."""
    p.add_argument("--base", choices=sorted(BACKBONES), metavar="NAME", help=_BACKBONE_HELP)
    p.add_argument(
        "--weights",
        metavar="FILE",
        help="base weights: imagenet (Keras downloads them once), a local .h5 file (offline), "
        "or demo (synthetic: tests only); default: the template's, imagenet",
    )
    p.add_argument(
        "--budget-minutes",
        type=float,
        metavar="N",
        help="recipe auto: wall time of advise's probes and both training stages "
        "(train.budget_minutes); the plan fits the fine-tuning epochs into what advise leaves",
    )
    _add_model_name_arg(p, "model name (default: DATA_DIR's folder name)", "--name")
    p.add_argument(
        "--config",
        "-c",
        metavar="TEMPLATE",
        help="template to start from (default: configs/photos.yaml, shipped in the package)",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        default=[],
        help="override a config key, e.g. --set fine_tune.epochs=3 (repeatable)",
    )


# ---------------------------------------------------------------- commands


def cmd_demo_data(args) -> int:
    from graft.components.demo_data import generate

    counts = generate(
        args.out,
        classes=args.classes,
        per_class=args.per_class,
        size=args.size,
        seed=args.seed,
        task=args.task,
    )
    log(f"demo-data: wrote {sum(counts.values())} images in {len(counts)} classes to {args.out}")
    return 0


def cmd_config_show(args) -> int:
    cfg = _config(args)
    print(json.dumps(cfg.to_dict(), indent=2) if args.json else dump_yaml(cfg), end="")
    return 0


def cmd_ingest(args) -> int:
    from graft.components.ingest import ingest

    overrides = list(args.set)
    if args.source:
        overrides = [f"data.path={args.source}", *overrides]
        if args.source.lower().endswith(".csv"):
            overrides.insert(0, "data.source=csv")
    cfg = load_config(
        args.config, overrides, None if args.config else {"data": {"path": args.source}}
    )
    r = ingest(cfg.data, args.out)
    print(
        json.dumps(
            {
                "out_dir": r.out_dir,
                "labels": r.labels,
                "written": r.written,
                "quarantined": r.quarantined,
                "input_files": r.input_files,
                "counts": r.counts,
            },
            indent=2,
        )
    )
    return 0


def cmd_validate(args) -> int:
    from graft.components.validate import ValidationFailed, validate

    cfg = load_config(args.config, args.set, None if args.config else {"data": {"path": "."}})
    try:
        r = validate(cfg.validate_, args.examples, args.out)
    except ValidationFailed as e:
        log(str(e), level="error")
        return 3
    print(json.dumps(vars(r), indent=2))
    return 0


def cmd_run(args) -> int:
    _run_and_summarize(_config(args), args)
    return 0


def advise_config(args) -> GraftConfig:
    """The config `graft advise` advises on: for a folder, what `graft train` would run.

    Args:
        args: `graft advise`'s parsed command line (DATA_DIR or a config, --config, --set, ...).

    Returns:
        The validated config.
    """
    target = args.data_or_config
    if os.path.isdir(target) or "://" in target:
        return load_config(
            args.config or photos_template(), [*train_overrides(args, target), *args.set]
        )
    if os.path.isfile(target) and target.endswith((".yaml", ".yml", ".json")):
        if args.config:
            args._parser.error("give DATA_DIR with --config TEMPLATE, or a config alone")
        name = [f"export.model_name={args.model_name}"] if args.model_name else []
        return load_config(target, [*name, *flag_overrides(args), *args.set])
    args._parser.error(f"DATA_DIR is neither a folder nor a YAML config: {target}")


def cmd_advise(args) -> int:
    """Ingest, validate and advise (cached like a run), then print the evidence and the plan."""
    from graft.components import label_issues
    from graft.components.advise import advice_table, read_advice
    from graft.pipeline.runner import run_pipeline

    cfg = advise_config(args)
    import_tensorflow_quietly()
    if cfg.recipe == "manual":
        log("advise: the config says recipe: manual; advising as recipe: auto would")
    cfg = cfg.model_copy(update={"recipe": "auto" if cfg.recipe == "manual" else cfg.recipe})
    run = run_pipeline(cfg, until="advise")
    advice = read_advice(run["steps"]["advise"]["output"])
    ev = advice.get("evidence")
    print(advice_table(advice))
    if ev:
        print(
            f"\nevidence: {ev['n_train']} train / {ev['n_val']} val images, {ev['n_classes']} "
            f"classes (fewest {ev['per_class_min']}), photos {ev['median_side']} px median side, "
            f"base forward {ev['images_per_s']:.0f} images/s here; measured in {ev['seconds']:.0f}s"
        )
        for p in ev["probes"]:
            print(
                f"  probe {p['depth']:>6} {p['layer']:<24} {p['size']:>4}px {p['dim']:>5}-d  "
                f"{p['accuracy']:.3f} [{p['low']:.3f}, {p['high']:.3f}]  n={p['n']}"
            )
    issues = label_issues.read(run["steps"]["advise"]["output"])
    if issues:
        print(f"\n{label_issues.summary(issues)}" + (", the first 10:" if issues["issues"] else ""))
        if issues["issues"]:
            print(label_issues.table(issues, 10))
    print(f"\nadvice.json: {os.path.join(run['steps']['advise']['output'], 'advice.json')}")
    return 0


def _at_least_one(text: str) -> int:
    """argparse type: a whole number from 1 (argparse names the flag when this raises)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


def cmd_inspect_base(args) -> int:
    from graft.components.model import backbone, describe_base, plan_unfreeze, unfreeze_text
    from graft.core.config import UnfreezeConfig

    b = backbone(args.name)
    if args.size is not None and args.size < b.min_size:
        raise ConfigError(f"--size {args.size}: {args.name}'s inputs are at least {b.min_size} px")
    if args.alpha is not None and not args.name.startswith("mobilenet"):
        raise ConfigError(f"--alpha is the MobileNets' width multiplier; {args.name} has none")
    kwargs = {"alpha": args.alpha} if args.alpha else {}
    base, rows = describe_base(args.name, args.size, kwargs)
    blocks: dict[str, list] = {}
    for r in rows:
        blocks.setdefault(r.block, []).append(r)
    print(
        f"{args.name}: {len(rows)} layers, {base.count_params():,} parameters, input "
        f"{base.input_shape[1:]}"
    )
    print(f"{'index':>5}  {'name':<32} {'type':<24} {'block':<14} {'params':>9}")
    last = None
    for r in rows:
        if r.block != last:
            print(
                f"{'':>5}  ---- block {r.block} ({len(blocks[r.block])} layers, starts at "
                f"index {r.index}) ----"
            )
            last = r.block
        print(f"{r.index:>5}  {r.name:<32} {r.kind:<24} {r.block:<14} {r.params:>9,}")
    # what fine-tuning trains: computed by the same plan_unfreeze the fine_tune step applies
    default = UnfreezeConfig()
    print(
        f"\nFine-tuning with the defaults (fine_tune.unfreeze.mode: {default.mode}) unfreezes "
        f"{unfreeze_text(plan_unfreeze(base.layers, default, args.name))}."
    )
    firsts = [(b, rs[0]) for b, rs in blocks.items() if b not in ("stem", "top")]
    print("Fewer layers (small data, or a base far from your images' domain), e.g.:")
    for _, r in firsts[-3:]:
        cfg = UnfreezeConfig(mode="from_layer", from_layer=r.name)
        print(
            f"  fine_tune.unfreeze: {{mode: from_layer, from_layer: {r.name}}}\n"
            f"      unfreezes {unfreeze_text(plan_unfreeze(base.layers, cfg, args.name))}"
        )
    frac = UnfreezeConfig(mode="top_fraction")
    print(
        f"  fine_tune.unfreeze: {{mode: top_fraction, top_fraction: {frac.top_fraction}}}\n"
        f"      unfreezes {unfreeze_text(plan_unfreeze(base.layers, frac, args.name))}"
    )
    if args.plot:
        how = _plot_base(base, rows, args.plot)
        log(f"inspect-base: {how} written to {args.plot}")
    return 0


def _plot_base(base, rows, path: str) -> str:
    """Keras' layer graph with pydot + graphviz; without them, a matplotlib block chart."""
    import keras

    try:
        keras.utils.plot_model(base, to_file=path, show_shapes=True)
        return "layer graph (pydot + graphviz)"
    except (ImportError, OSError, FileNotFoundError, AttributeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        log(
            f"inspect-base: no layer graph ({reason}); drawing blocks with matplotlib. For the "
            "graph: pip install 'graft[plot]' and apt-get install graphviz",
            level="warn",
        )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks: dict[str, list] = {}
    for r in rows:
        blocks.setdefault(r.block, []).append(r)
    names = list(blocks)
    params = [sum(r.params for r in blocks[b]) for b in names]
    fig, ax = plt.subplots(figsize=(8, 0.9 + 0.28 * len(names)))
    ax.barh(range(len(names)), params, color="#4c72b0")
    ax.set_yticks(
        range(len(names)), [f"{b} (#{blocks[b][0].index}, {len(blocks[b])})" for b in names]
    )
    ax.invert_yaxis()
    ax.set_xlabel("parameters")
    ax.set_title(f"{base.name}: parameters per block (first layer #, layers)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return "block chart (matplotlib)"


def cmd_pretrain(args) -> int:
    from graft.components.pretrain import pretrain_demo_base

    pretrain_demo_base(args.out or demo_weights(), {"cut_at": args.cut_at} if args.cut_at else None)
    return 0


def cmd_compile(args) -> int:
    from graft.pipeline.kubeflow import compile_pipeline

    cfg = _config(args)
    path = compile_pipeline(cfg, args.out)
    log(f"compile: wrote {path}")
    return 0


def cmd_step(args) -> int:
    """One step of the compiled Kubeflow pipeline, in its container: kfp's executor protocol
    over the step's generated signature (pipeline/kfp_components.py)."""
    os.environ.setdefault("_KFP_RUNTIME", "true")  # as kfp's own components: no client, 1.3 s
    from kfp.dsl.executor import Executor

    from graft.pipeline import dag
    from graft.pipeline.kfp_components import key_function, step_function

    make = key_function if args.freshness else step_function
    Executor(json.loads(args.executor_input), make(dag.step(args.name))).execute()
    return 0


def cmd_submit(args) -> int:
    from graft.pipeline.kubeflow import submit

    cfg = _config(args)
    out = submit(
        cfg,
        host=args.host,
        experiment=args.experiment,
        run_name=args.run_name,
        schedule=args.schedule,
        max_concurrency=args.max_concurrency,
        dry_run=args.dry_run,
    )
    print(json.dumps(out, indent=2))
    return 0


def cmd_serve(args) -> int:
    from graft.serving.options import from_arguments
    from graft.serving.server import serve_forever

    return serve_forever(from_arguments(args))


def cmd_predict(args) -> int:
    from graft.core.paths import image_files

    if sum(map(bool, (args.model_dir, args.model_name or args.server, args.tflite))) > 1:
        raise ConfigError(
            "graft predict: give one of --model-dir DIR, --tflite FILE (local) or --model-name "
            "NAME (server)"
        )
    if args.tflite:
        if args.version is not None:
            raise ConfigError("graft predict: --tflite names one file; --version is not for it")
        return _predict_tflite(args)
    if not args.model_dir and not args.model_name:
        raise ConfigError(
            "graft predict: give --model-dir DIR (a SavedModel or models/NAME, no server) or "
            "--model-name NAME [--server HOST:PORT] (a running graft serve or TF Serving)"
        )
    images = image_files(args.images)
    if args.model_dir:
        from graft.serving.local import LocalPredictor

        predictor = LocalPredictor(args.model_dir, batch_size=args.batch_size, version=args.version)
        preds = predictor.predict(images, args.top_k)
        version = f" v{predictor.version}" if predictor.version is not None else ""
        return _report_predictions(preds, args, f"{predictor.path}{version}")
    from graft.core.quiet import native_stderr_captured
    from graft.serving.client import DEFAULT_SERVER

    server = args.server or DEFAULT_SERVER
    with native_stderr_captured():  # its gRPC/TF imports' native start-up lines
        from graft.serving.client import GraftClient, predict_files
    import grpc

    try:
        with GraftClient(server, args.model_name, args.version, timeout=args.timeout) as c:
            preds = predict_files(c, images, args.top_k, args.batch_size)
    except grpc.RpcError as e:
        print(f"graft predict: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    return _report_predictions(preds, args, f"{args.model_name} @ {server}")


def _predict_tflite(args) -> int:
    """An edge model (export.tflite) in this process: the same rows as --model-dir."""
    from graft.components.tflite import predict_files
    from graft.core.paths import image_files
    from graft.serving.local import Prediction

    import_tensorflow_quietly()  # decode and resize as training did
    rows = predict_files(args.tflite, image_files(args.images), args.top_k)
    preds = [Prediction(img, labels, scores, error) for img, labels, scores, error in rows]
    return _report_predictions(preds, args, args.tflite)


def _report_predictions(preds, args, title: str) -> int:
    """CSV file, JSON lines or a table; exit 1 if any image could not be classified."""
    from graft.serving.local import print_table, write_csv

    if args.csv:
        write_csv(preds, args.csv, args.top_k)
        log(f"predict: wrote {len(preds)} rows to {args.csv} ({title})", level="ok")
    elif args.json:
        for p in preds:
            row = {"image": p.image, "labels": p.labels, "scores": [round(s, 6) for s in p.scores]}
            print(json.dumps({**row, "error": p.error} if p.error else row))
    else:
        print_table(preds, title, args.top_k)
    bad = [p for p in preds if p.error]
    for p in bad:
        log(f"predict: {p.image}: {p.error}", level="error")
    return 1 if bad else 0


def _run_and_summarize(cfg: GraftConfig, args) -> dict:
    from graft.pipeline.runner import run_pipeline
    from graft.pipeline.summary import print_summary

    run = run_pipeline(
        cfg,
        use_cache=not args.no_cache,
        only=args.only,
        from_step=args.from_step,
        force_push=args.force,
        run_id=getattr(args, "run_id", None),
    )
    print_summary(run, cfg)
    return run


def photos_template() -> str:
    """configs/photos.yaml, shipped inside the package too (graft/assets links to it).

    Returns:
        Its path where Graft is installed: `graft train`'s template.
    """
    from importlib.resources import files

    return str(files("graft") / "assets" / "photos.yaml")


def _model_name(data_dir: str) -> str:
    """The data folder's name as a model name (export.model_name's pattern), else 'graft'."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(os.path.abspath(data_dir)).name).strip("-.")
    return name if re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", name or "") else "graft"


def train_overrides(args, data_dir: str | None = None) -> list[str]:
    """The config keys `graft train`'s (and `graft advise DATA_DIR`'s) arguments set
    on the template.

    Args:
        args: the parsed command line.
        data_dir: the image folder (args.data_dir when None).

    Returns:
        "dotted.key=value" overrides, for load_config.
    """
    data_dir = data_dir or args.data_dir
    remote = "://" in data_dir  # gs://, s3://...: ingest reads it through tf.io.gfile
    if not remote and not os.path.isdir(data_dir):
        raise ConfigError(f"graft {args.command}: DATA_DIR is not a folder: {data_dir}")
    overrides = [
        "data.source=folder",
        f"data.path={data_dir if remote else os.path.abspath(data_dir)}",
        f"export.model_name={args.model_name or _model_name(data_dir)}",
    ]
    return overrides + flag_overrides(args)


def flag_overrides(args) -> list[str]:
    """The config keys --budget-minutes, --base and --weights set."""
    overrides = []
    if args.budget_minutes is not None:
        overrides.append(f"train.budget_minutes={args.budget_minutes}")
    if args.base:
        overrides.append(f"base.name={args.base}")
    if args.weights:
        weights = args.weights
        if weights not in ("imagenet", "demo", "null"):
            weights = os.path.abspath(os.path.expanduser(weights))
        overrides.append(f"base.weights={weights}")
    return overrides


def cmd_train(args) -> int:
    template = args.config or photos_template()
    cfg = load_config(
        template,
        [*train_overrides(args), *args.set],
        template=template == photos_template(),  # the template's keys are not the user's
    )
    import_tensorflow_quietly()
    log(
        f"train: {cfg.data.path} -> model '{cfg.export.model_name}' on {cfg.base.name} "
        f"(weights: {cfg.base.weights}), template {args.config or 'configs/photos.yaml'}"
    )
    run = _run_and_summarize(cfg, args)
    log(f"train: to change settings and re-run: graft run --config {run['config_file']}")
    return 0


def _run_dirs(root: str) -> list[Path]:
    """The run folders under run_root (those with a run.json), oldest first."""
    base = Path(root)
    if not base.is_dir():
        return []
    return sorted(d for d in base.iterdir() if (d / RUN_RECORD).is_file())


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def cmd_runs_list(args) -> int:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    runs = _run_dirs(args.run_root)
    if not runs:
        log(f"runs: no runs under {os.path.abspath(args.run_root)}", level="warn")
        return 0
    t = Table(  # one space between columns: a run fits 80 columns
        title=f"runs in {os.path.abspath(args.run_root)}",
        box=box.SIMPLE_HEAD,
        padding=0,
        pad_edge=False,
        show_edge=False,
    )
    # the run id whole, to copy into graft report RUN_ID
    t.add_column("run id", no_wrap=True, min_width=max(len(d.name) for d in runs))
    for col in RUN_COLUMNS:
        t.add_column(col, overflow="fold", no_wrap=col in ("status", "pushed"))
    for d in runs:
        t.add_row(d.name, *run_row(_read_json(d / RUN_RECORD)))
    Console().print(t)
    return 0


RUN_COLUMNS = ("model", "data", "status", "min", "acc", "drift", "pushed")


def drift_text(summary: dict | None) -> str:
    """The drift step's verdict in one word: none, flagged, blocked; '-' when not checked."""
    if not summary or not summary.get("checked"):
        return "-"
    return "blocked" if summary.get("blocked") else "flagged" if summary.get("flagged") else "none"


def run_row(run: dict) -> list[str]:
    """The cells of one run in `graft runs list`, after its id.

    Args:
        run: a run record (run.json).

    Returns:
        Model, data folder, status, minutes, test accuracy, drift and push, as text.
    """
    cfg = run.get("config") or {}
    steps = run.get("steps", {})
    ev = steps.get("evaluate", {}).get("summary", {})
    push = steps.get("push", {}).get("summary", {})
    acc = ev.get("accuracy")
    status = str(run.get("status", "?"))
    if status == "running" and _gone(run):
        status = "stopped"  # killed part-way: its process is no longer there
    last = next(reversed(steps), None)
    if status == "succeeded" and last and last != STEP_NAMES[-1]:
        status = f"{last} only"  # graft advise: ingest, validate, drift and advise
    data = str((cfg.get("data") or {}).get("path") or "?").rstrip("/").rsplit("/", 1)[-1]
    if push.get("pushed"):
        pushed = str(push["version"])
    elif push.get("already_at_destination"):
        pushed = "already"  # the same model, pushed by an earlier run
    else:
        pushed = "not blessed" if ev.get("blessed") is False else "-"
    return [
        str((cfg.get("export") or {}).get("model_name") or "?"),
        data,
        status,
        f"{run.get('seconds', 0) / 60:.1f}",
        "-" if acc is None else f"{acc:.3f}",
        drift_text(steps.get("drift", {}).get("summary")),
        pushed,
    ]


def _gone(run: dict) -> bool:
    """Whether a run.json that says running belongs to a process that is gone (this host only:
    another host's process cannot be looked up from here)."""
    import socket

    if run.get("host") != socket.gethostname() or not isinstance(run.get("pid"), int):
        return False
    try:
        os.kill(run["pid"], 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's
        return False
    return False


def _one_model(destination: str, given: str | None) -> str:
    """The model named, or the only model at the destination; else an error naming them."""
    if given:
        return given
    from graft.components.registry import models_at

    there = models_at(destination)
    if len(there) == 1:
        return there[0]
    if not there:
        raise ConfigError(f"no models at {os.path.abspath(destination)} (--destination)")
    raise ConfigError(f"{len(there)} models at {destination}: {', '.join(there)}; --model-name")


def cmd_models_list(args) -> int:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from graft.components.registry import COLUMNS, require_model, table_row

    name = _one_model(args.destination, args.model_name)
    entries = require_model(args.destination, name)  # exit 2 naming the models there
    shown = [e for e in entries if args.all or e["status"] not in ("removed", "deleted")]
    if args.json:
        for e in shown:
            print(json.dumps(e, default=str))
        return 0
    t = Table(
        title=f"{name} at {args.destination} (TF Serving serves the newest version that loads)",
        box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0),
        pad_edge=False,
        show_edge=False,
    )
    for col in COLUMNS:
        t.add_column(col, no_wrap=col in ("version", "run id"))
    for e in shown:
        t.add_row(*table_row(e).values(), style="bold" if e["status"] == "served" else None)
    Console().print(t)
    for e in shown:
        if e.get("load_problem"):
            log(f"models: version {e['version']} would not load: {e['load_problem']}", level="warn")
    hidden = len(entries) - len(shown)
    if hidden:
        log(f"models: {hidden} pruned or deleted versions not shown (--all shows them)")
    log(f"models: everything about one version: graft models show VERSION --model-name {name}")
    return 0


def cmd_models_show(args) -> int:
    from graft.components.registry import edge_models, entries, entry

    name, version = args.model_name, args.version
    if args.legacy_version is not None:  # graft models show NAME VERSION
        name, version = name or args.version, args.legacy_version
    name = _one_model(args.destination, name)
    if version == "served":  # what `graft models list` calls served: the newest that loads
        e = next((x for x in entries(args.destination, name) if x["status"] == "served"), None)
        if e is None:
            raise ConfigError(f"nothing of '{name}' is served from {args.destination}")
    elif not version.isdigit():
        raise ConfigError(f"VERSION must be a version number or 'served', got '{version}'")
    else:
        e = entry(args.destination, name, int(version))
    if e.get("status") in ("served", "available"):  # its folder is there: what it ships
        e["tflite"] = edge_models(args.destination, name, int(e["version"]))
    print(json.dumps(e, indent=2, default=str))
    return 0


def cmd_rollback(args) -> int:
    from dataclasses import asdict

    from graft.components.push import rollback

    r = rollback(
        args.destination, _one_model(args.destination, args.model_name), args.to, reason=args.reason
    )
    print(json.dumps(asdict(r), indent=2))
    return 0


def cmd_report(args) -> int:
    runs = _run_dirs(args.run_root)
    with_report = [d for d in runs if (d / "evaluate" / "report.html").is_file()]
    if args.run_id == "latest":
        if not with_report:
            raise ConfigError(f"no run with a report under {os.path.abspath(args.run_root)}")
        run_dir = with_report[-1]
    else:
        run_dir = Path(args.run_root) / args.run_id
        if not (run_dir / RUN_RECORD).is_file():
            known = ", ".join(d.name for d in runs[-5:]) or "none"
            raise ConfigError(f"no run '{args.run_id}' under {args.run_root}; latest: {known}")
        if run_dir not in with_report:
            status = _read_json(run_dir / RUN_RECORD).get("status", "?")
            raise ConfigError(f"run {args.run_id} ({status}) has no evaluation report")
    path = (run_dir / "evaluate" / "report.html").absolute()
    print(path)
    if args.open and not _open_in_browser(path.as_uri()):
        no_display = sys.platform.startswith("linux") and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
        )
        log(
            "report: no web browser available here"
            + (" (no display: DISPLAY and WAYLAND_DISPLAY are unset)" if no_display else "")
            + f"; open the file printed above elsewhere: {path}",
            level="warn",
        )
    return 0


def _open_in_browser(url: str) -> bool:
    """webbrowser.open, which returns False (or raises) when it finds no browser to start."""
    import webbrowser

    try:
        return bool(webbrowser.open(url))
    except webbrowser.Error:
        return False


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show."""

    def _get_help_string(self, action):
        if action.default in (None, False, [], argparse.SUPPRESS) or "%(default)" in (
            action.help or ""
        ):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """Every (sub)command shares the defaults-showing help and a -v/--verbose flag."""

    def __init__(self, *a, **kw):
        kw.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*a, **kw)
        self.set_defaults(_parser=self)  # the deepest (sub)command's parser: its usage on errors
        self.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            default=argparse.SUPPRESS,
            help="show library output too: TensorFlow's C++ start-up lines, Beam, Keras",
        )


# One register function per command: it adds the command's parser, flags and cmd_* function.


def _register_demo_data(sub) -> None:
    p = sub.add_parser("demo-data", help="generate a procedural image-folder dataset")
    p.add_argument("out", help="folder to write ROOT/<class>/*.png into")
    p.add_argument("--classes", type=int, default=5, help="number of classes")
    p.add_argument("--per-class", type=int, default=200, help="images per class")
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument(
        "--task",
        choices=["target", "source"],
        default="target",
        help="source: disjoint classes, for pretraining the demo base",
    )
    p.set_defaults(fn=cmd_demo_data)


def _register_config(sub) -> None:
    p = sub.add_parser("config", help="config tools")
    csub = p.add_subparsers(dest="config_cmd", required=True)
    s = csub.add_parser("show", help="print the resolved config")
    _add_config_args(s)
    s.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    s.set_defaults(fn=cmd_config_show)


def _register_ingest(sub) -> None:
    p = sub.add_parser("ingest", help="images -> TFRecords (Beam); works without a config")
    p.add_argument("source", nargs="?", help="image folder or CSV manifest (overrides data.path)")
    p.add_argument("--out", "-o", required=True, help="output folder for the TFRecords and stats")
    _add_config_args(p, required=False)
    p.set_defaults(fn=cmd_ingest, tensorflow=True)


def _register_validate(sub) -> None:
    p = sub.add_parser("validate", help="check an ingest output")
    p.add_argument("examples", help="ingest output dir")
    p.add_argument("--out", "-o", required=True, help="output folder for validation.json")
    _add_config_args(p, required=False)
    p.set_defaults(fn=cmd_validate, tensorflow=True)


def _register_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="one command: a folder of labelled photos -> evaluated, exported, pushed model",
        description="Runs the whole pipeline with the configs/photos.yaml template (ImageNet "
        "MobileNetV2, settings measured on real photos) and writes the resolved config to "
        "runs/<run_id>/config.yaml: edit it and re-run with graft run --config.",
    )
    p.add_argument(
        "data_dir",
        metavar="DATA_DIR",
        help="ROOT/<class>/*.jpg, or pre-split ROOT/{train,val,test}/<class>/",
    )
    _add_data_args(p)
    _add_run_args(p)
    p.set_defaults(fn=cmd_train)


def _register_run(sub) -> None:
    p = sub.add_parser("run", help="run the whole pipeline locally")
    _add_config_args(p)
    _add_run_args(p)
    p.set_defaults(fn=cmd_run, tensorflow=True)


def _register_advise(sub) -> None:
    p = sub.add_parser(
        "advise",
        help="where the data sits in the size x similarity matrix, and the plan (no training)",
        description="Ingests, validates and advises as graft train would (same template, its "
        "data and config flags; not its run flags), then prints the evidence and the plan; "
        "nothing is trained.",
    )
    p.add_argument(
        "data_or_config",
        metavar="DATA_DIR",
        help="the image folder graft train would take (or a YAML config to advise on)",
    )
    _add_data_args(p)
    p.set_defaults(fn=cmd_advise)


def _register_inspect_base(sub) -> None:
    p = sub.add_parser("inspect-base", help="list a backbone's layers and blocks")
    p.add_argument("name", choices=sorted(BACKBONES), metavar="NAME", help=_BACKBONE_HELP)
    p.add_argument("--alpha", type=float, help="width multiplier (MobileNets), e.g. 0.35")
    p.add_argument("--size", type=int, help="input side in pixels (default: the backbone's own)")
    p.add_argument(
        "--plot",
        metavar="FILE",
        help="also draw the architecture to FILE (.png): keras+pydot+graphviz when installed "
        "(pip install 'graft[plot]'), else a matplotlib block chart",
    )
    p.set_defaults(fn=cmd_inspect_base, tensorflow=True)


def _register_pretrain_demo_base(sub) -> None:
    p = sub.add_parser("pretrain-demo-base", help="train the demo base on the source task")
    p.add_argument(
        "--out",
        help="weights file to write (default: graft/assets/demo_base.weights.h5 in the package)",
    )
    p.add_argument(
        "--cut-at",
        metavar="LAYER",
        help="pretrain only the base up to LAYER (use it with base.cut_at: LAYER); the tests' "
        "shallow base is --cut-at block_6_expand_relu",
    )
    p.set_defaults(fn=cmd_pretrain, tensorflow=True)


def _register_compile(sub) -> None:
    p = sub.add_parser("compile", help="compile the Kubeflow pipeline YAML")
    _add_config_args(p)
    p.add_argument("--out", "-o", default="pipeline.yaml", help="pipeline YAML to write")
    _hidden_alias(p, "--output", "out")
    p.set_defaults(fn=cmd_compile)


def _register_step(sub) -> None:
    p = sub.add_parser("step", help="run one step in a Kubeflow container (its entrypoint)")
    p.add_argument("name", choices=STEP_NAMES, help="the step")
    p.add_argument("--executor-input", required=True, help="kfp's executor input, as JSON")
    p.add_argument(
        "--freshness",
        action="store_true",
        help="compute the step's external key (data folder, served version) instead",
    )
    p.set_defaults(fn=cmd_step)


def _register_submit(sub) -> None:
    p = sub.add_parser("submit", help="submit a run or a recurring run to Kubeflow Pipelines")
    _add_config_args(p)
    p.add_argument("--host", help="KFP API URL (default kubeflow.host)")
    p.add_argument("--experiment", help="KFP experiment (default kubeflow.experiment)")
    p.add_argument("--run-name", help="name of the KFP run")
    p.add_argument("--schedule", metavar="CRON", help='e.g. "0 3 * * 1": a recurring run')
    p.add_argument("--max-concurrency", type=int, default=1, help="recurring runs allowed at once")
    p.add_argument(
        "--dry-run", action="store_true", help="compile and show what would be submitted"
    )
    p.set_defaults(fn=cmd_submit)


def _register_serve(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="TF-Serving-compatible gRPC server for local use (REST too with --rest-port)",
    )
    serve_options.add_arguments(p)
    p.set_defaults(fn=cmd_serve, tensorflow=True)


def _register_predict(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="classify images: locally from a SavedModel, or through a (TF) Serving endpoint",
        description="Local: --model-dir models/NAME (newest version) or a version folder, or "
        "--tflite FILE; no server. Server: --model-name NAME [--server HOST:PORT]. Folders are "
        "walked for images.",
    )
    p.add_argument(
        "images",
        nargs="+",
        metavar="FILE_OR_DIR",
        help="image files, or folders walked recursively for .jpg/.jpeg/.png/.gif/.bmp",
    )
    p.add_argument(
        "--model-dir",
        metavar="DIR",
        help="predict in this process from a SavedModel version folder or a model base path",
    )
    p.add_argument(
        "--tflite",
        metavar="FILE",
        help="predict in this process with an edge model (export.tflite; labels.txt beside it)",
    )
    _add_model_name_arg(p, "model name on the server", "--model")
    p.add_argument("--server", metavar="HOST:PORT", help="gRPC endpoint (default 127.0.0.1:8500)")
    p.add_argument("--version", type=int, help="model version (default: the newest)")
    p.add_argument("--top-k", type=_at_least_one, default=3, help="labels per image")
    p.add_argument("--csv", metavar="OUT", help="write the predictions to this CSV file")
    p.add_argument("--json", action="store_true", help="print one JSON line per image")
    p.add_argument(
        "--batch-size", type=_at_least_one, default=32, help="images per model call / request"
    )
    p.add_argument("--timeout", type=float, default=30.0, help="server request timeout, seconds")
    p.set_defaults(fn=cmd_predict)


def _register_runs(sub) -> None:
    p = sub.add_parser("runs", help="past runs")
    rsub = p.add_subparsers(dest="runs_cmd", required=True, metavar="COMMAND")
    s = rsub.add_parser("list", help="table of runs: status, time, test accuracy, push")
    s.add_argument("--run-root", default="runs", help="runner.run_root of the runs")
    s.set_defaults(fn=cmd_runs_list)


def _register_models(sub) -> None:
    p = sub.add_parser("models", help="pushed versions and their lineage (the registry)")
    msub = p.add_subparsers(dest="models_cmd", required=True, metavar="COMMAND")
    s = msub.add_parser("list", help="table of versions: data, base, accuracy, blessing, served")
    s.add_argument("--destination", default="models", help="push.destination")
    _add_model_name_arg(
        s, "model name (export.model_name; default: the only model there)", "--model"
    )
    s.add_argument("--all", action="store_true", help="also versions pruned or deleted since")
    s.add_argument("--json", action="store_true", help="one JSON entry per line")
    s.set_defaults(fn=cmd_models_list)
    s = msub.add_parser("show", help="one version's full lineage record, as JSON")
    s.add_argument("version", metavar="VERSION", help="version number, or served")
    s.add_argument("legacy_version", nargs="?", help=argparse.SUPPRESS)  # old form: NAME VERSION
    s.add_argument("--destination", default="models", help="push.destination")
    _add_model_name_arg(s, "model name (default: the only model there)")
    s.set_defaults(fn=cmd_models_show)


def _register_rollback(sub) -> None:
    p = sub.add_parser(
        "rollback",
        help="serve an older version again: publish a copy of it as the newest version",
        description="TF Serving serves the newest version, so the copy becomes the served one "
        "once a polling server has loaded it; no request fails meanwhile. Recorded in the "
        "registry (graft models list).",
    )
    p.add_argument("--destination", default="models", help="push.destination")
    _add_model_name_arg(
        p, "model name (export.model_name; default: the only model there)", "--model"
    )
    p.add_argument("--to", type=int, required=True, metavar="VERSION", help="version to serve")
    p.add_argument("--reason", help="why, recorded in the registry")
    p.set_defaults(fn=cmd_rollback, tensorflow=True)


def _register_report(sub) -> None:
    p = sub.add_parser("report", help="print the path of a run's evaluation report")
    p.add_argument(
        "run_id", nargs="?", default="latest", help="a run id (graft runs list) or latest"
    )
    p.add_argument("--run-root", default="runs", help="runner.run_root of the runs")
    p.add_argument("--open", action="store_true", help="open it in the web browser")
    p.set_defaults(fn=cmd_report)


# `graft --help` lists the commands in this order.
_COMMANDS = (
    _register_demo_data,
    _register_config,
    _register_ingest,
    _register_validate,
    _register_train,
    _register_run,
    _register_advise,
    _register_inspect_base,
    _register_pretrain_demo_base,
    _register_compile,
    _register_step,
    _register_submit,
    _register_serve,
    _register_predict,
    _register_runs,
    _register_models,
    _register_rollback,
    _register_report,
)


def build_parser() -> argparse.ArgumentParser:
    """graft's parser: the top level, then each command from its own register function.

    Returns:
        The parser of the `graft` command and its subcommands.
    """
    ap = _Parser(
        prog="graft",
        description="Transfer-learning image classifiers, folder to TF Serving. "
        "Start with: graft train DATA_DIR",
    )
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")
    for register in _COMMANDS:
        register(sub)
    return ap


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Like parse_args, but an unknown option is reported with its subcommand's own usage.

    Args:
        argv: the command line (sys.argv[1:] when None).

    Returns:
        The parsed namespace; `fn` is the command to run.
    """
    ap = build_parser()
    args, extra = ap.parse_known_args(argv)
    if extra:
        getattr(args, "_parser", ap).error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """The `graft` command: parse, run the subcommand with native noise filtered, and turn
    errors into one clear line (GRAFT_DEBUG=1 for the traceback).

    Args:
        argv: the command line (sys.argv[1:] when None).

    Returns:
        The exit status: the command's, 2 for a config error, 130 when interrupted, 1 for
        another error.
    """
    args = parse_args(argv)
    if getattr(args, "verbose", False):
        os.environ[VERBOSE_ENV] = "1"  # subprocesses (Beam workers, servers) inherit it
        if not _TF_LEVEL_GIVEN:
            os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        log_setup(verbose=True)
    _quiet_libraries()
    try:
        with native_stderr_filtered():  # libjpeg's lines about a damaged JPEG: -v shows them
            if getattr(args, "tensorflow", False):
                import_tensorflow_quietly()  # before any step imports it: no C++ start-up noise
            return args.fn(args)
    except ConfigError as e:
        print(f"graft: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("graft: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - top-level: one clear line, traceback on request
        if os.environ.get("GRAFT_DEBUG"):
            raise
        print(
            f"graft: error: {type(e).__name__}: {e}\n(set GRAFT_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
