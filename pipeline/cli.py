"""`graft` command line: argparse subcommands over the pipeline and components."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from graft.core.config import ConfigError, GraftConfig, dump_yaml, load_config  # noqa: E402
from graft.core.log import log  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def _quiet_libraries() -> None:
    """Graft prints its own progress; library chatter only with GRAFT_DEBUG=1."""
    if os.environ.get("GRAFT_DEBUG"):
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
    from graft.pipeline.runner import run_pipeline
    from graft.pipeline.summary import print_summary

    cfg = _config(args)
    run = run_pipeline(
        cfg,
        use_cache=not args.no_cache,
        only=args.only,
        from_step=args.from_step,
        force_push=args.force,
    )
    print_summary(run, cfg)
    return 0


def cmd_inspect_base(args) -> int:
    from graft.components.model import describe_base

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
    firsts = [(b, rs[0]) for b, rs in blocks.items()]
    top = firsts[-4:-1] if len(firsts) > 3 else firsts
    print("\nFine-tune from a block boundary, e.g.:")
    for b, r in top:
        frac = 1 - r.index / len(rows)
        print(
            f"  fine_tune:\n    unfreeze: {{mode: from_layer, from_layer: {r.name}}}   "
            f"# block {b}, index {r.index}, top {frac:.0%} of layers"
        )
    if args.plot:
        try:
            import keras

            keras.utils.plot_model(base, to_file=args.plot, show_shapes=True)
            log(f"inspect-base: architecture diagram written to {args.plot}")
        except (ImportError, OSError) as e:
            log(
                f"inspect-base: cannot draw the diagram ({e}); install graphviz (apt-get "
                "install graphviz) "
                "and pydot (pip install pydot)",
                level="error",
            )
            return 4
    return 0


def cmd_pretrain(args) -> int:
    from graft.components.pretrain import pretrain_demo_base

    pretrain_demo_base(args.out)
    return 0


def cmd_compile(args) -> int:
    from graft.pipeline.kubeflow import compile_pipeline

    cfg = _config(args)
    path = compile_pipeline(cfg, args.output)
    log(f"compile: wrote {path}")
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
    from graft.serving.server import serve_forever

    return serve_forever(args)


def cmd_predict(args) -> int:
    from graft.serving.client import predict_main

    return predict_main(args)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="graft", description="Transfer-learning image classifiers, folder to TF Serving."
    )
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo-data", help="generate a procedural image-folder dataset")
    p.add_argument("out")
    p.add_argument("--classes", type=int, default=5)
    p.add_argument("--per-class", type=int, default=200)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--task",
        choices=["target", "source"],
        default="target",
        help="source: disjoint classes, for pretraining the demo base",
    )
    p.set_defaults(fn=cmd_demo_data)

    p = sub.add_parser("config", help="config tools")
    csub = p.add_subparsers(dest="config_cmd", required=True)
    s = csub.add_parser("show", help="print the resolved config")
    _add_config_args(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_config_show)

    p = sub.add_parser("ingest", help="images -> TFRecords (Beam); works without a config")
    p.add_argument("source", nargs="?", help="image folder or CSV manifest (overrides data.path)")
    p.add_argument("--out", "-o", required=True)
    _add_config_args(p, required=False)
    p.set_defaults(fn=cmd_ingest)

    p = sub.add_parser("validate", help="check an ingest output")
    p.add_argument("examples", help="ingest output dir")
    p.add_argument("--out", "-o", required=True)
    _add_config_args(p, required=False)
    p.set_defaults(fn=cmd_validate)

    p = sub.add_parser("run", help="run the whole pipeline locally")
    _add_config_args(p)
    p.add_argument("--no-cache", action="store_true", help="re-run every step")
    p.add_argument("--only", metavar="STEP")
    p.add_argument("--from", dest="from_step", metavar="STEP", help="re-run from STEP on")
    p.add_argument("--force", action="store_true", help="push even if not blessed")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("inspect-base", help="list a backbone's layers and blocks")
    p.add_argument("name")
    p.add_argument("--alpha", type=float)
    p.add_argument("--size", type=int)
    p.add_argument("--plot", metavar="FILE")
    p.set_defaults(fn=cmd_inspect_base)

    p = sub.add_parser("pretrain-demo-base", help="train the demo base on the source task")
    p.add_argument("--out", default=str(REPO / "configs" / "demo_base.weights.h5"))
    p.set_defaults(fn=cmd_pretrain)

    p = sub.add_parser("compile", help="compile the Kubeflow pipeline YAML")
    _add_config_args(p)
    p.add_argument("--output", "-o", default="pipeline.yaml")
    p.set_defaults(fn=cmd_compile)

    p = sub.add_parser("submit", help="submit a run or a recurring run to Kubeflow Pipelines")
    _add_config_args(p)
    p.add_argument("--host", help="KFP API URL (default kubeflow.host)")
    p.add_argument("--experiment")
    p.add_argument("--run-name")
    p.add_argument("--schedule", metavar="CRON", help='e.g. "0 3 * * 1": a recurring run')
    p.add_argument("--max-concurrency", type=int, default=1)
    p.add_argument("--dry-run", action="store_true")
    p.set_defaults(fn=cmd_submit)

    p = sub.add_parser("serve", help="TF-Serving-compatible gRPC (+REST) server for local use")
    p.add_argument("--model-base-path", required=True)
    p.add_argument("--model-name", required=True)
    p.add_argument("--port", type=int, default=8500)
    p.add_argument("--rest-port", type=int, default=0, help="0: no REST")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--version-policy", default="latest", help="latest | all | specific:N[,M]")
    p.add_argument("--poll-seconds", type=float, default=2.0)
    p.add_argument("--max-message-mb", type=int, default=32)
    p.add_argument(
        "--max-pixels", type=int, default=40_000_000, help="larger images: RESOURCE_EXHAUSTED"
    )
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser("predict", help="classify images through a (TF) Serving gRPC endpoint")
    p.add_argument("images", nargs="+")
    p.add_argument("--server", default="127.0.0.1:8500")
    p.add_argument("--model", required=True)
    p.add_argument("--version", type=int)
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.add_argument("--timeout", type=float, default=30.0)
    p.set_defaults(fn=cmd_predict)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
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
