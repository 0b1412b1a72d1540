"""Fixtures: tiny generated data and one tiny pipeline run reused by e2e and serving tests."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_HOME", str(Path(__file__).parent / ".keras-empty"))  # never download

import argparse  # noqa: E402
import json  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("GRAFT_SHARED", REPO.parent / "shared"))
MOBILENET_V2 = (
    SHARED / "keras/models/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
)
# The tests' base: the demo recipe pretrained through block_6_expand_relu only
# (graft/assets/demo_base_shallow.weights.h5, `make pretrain-demo-base`), read up to that
# layer: 57 layers instead of the demo base's 154, a third of the CPU per model built,
# trained, saved or loaded. Tests of what the whole base does use DEMO_FULL_BASE.
SHALLOW_LAYER = "block_6_expand_relu"
SHALLOW_WEIGHTS = str(REPO / "graft" / "assets" / "demo_base_shallow.weights.h5")
TINY_BASE = {
    "name": "mobilenet_v2",
    "weights": SHALLOW_WEIGHTS,
    "kwargs": {"alpha": 0.35},
    "cut_at": SHALLOW_LAYER,
}
DEMO_FULL_BASE = {"name": "mobilenet_v2", "weights": "demo", "kwargs": {"alpha": 0.35}}


def tiny_config(tmp: Path, data: Path, **over) -> dict:
    """A 48 px, shallow-base (TINY_BASE; recipe auto: DEMO_FULL_BASE), few-step config,
    fine-tuning off; every e2e test starts from this."""
    cfg = {
        "data": {"path": str(data), "image_size": 48, "num_workers": 1},
        "recipe": "manual",  # the sections below as written; tests of recipe auto set it
        "validate": {"min_per_class": {"train": 2, "val": 1, "test": 1}},
        # recipe auto plans the cut itself from probes of the whole base's layers: its tests
        # read the whole demo base; every other test the shallow one
        "base": dict(DEMO_FULL_BASE if over.get("recipe") == "auto" else TINY_BASE),
        "train_head": {"epochs": 12, "batch_size": 16, "learning_rate": 0.01},
        # off unless a test is about fine-tuning (it is 40% of a tiny run: a second trace of the
        # whole base); pipeline_run and the tests of the fine-tune stage turn it on
        "fine_tune": {"enabled": False, "epochs": 1, "batch_size": 16},
        "export": {"model_name": "tiny", "warmup_requests": 2},
        "push": {"destination": str(tmp / "models")},
        "runner": {"run_root": str(tmp / "runs")},
    }
    for dotted, value in over.items():
        node = cfg
        parts = dotted.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return cfg


def tiny_advise_sets(tmp: Path, *extra: str) -> list[str]:
    """`graft advise` --set arguments for the whole demo base (advise plans the cut) and
    tiny_config's data, plus `extra` settings."""
    sets = [
        *extra,
        "base.weights=demo",
        "base.kwargs={alpha: 0.35}",
        "data.image_size=48",
        "data.num_workers=1",
        "validate.min_per_class={train: 2, val: 1, test: 1}",
        "advise.folds=3",
        f"runner.run_root={tmp / 'runs'}",
        f"push.destination={tmp / 'models'}",
    ]
    return [a for s in sets for a in ("--set", s)]


def tiny_images(root: Path) -> Path:
    """The tests' tiny folder at `root`: 3 demo classes x 40 images at 48 px."""
    from graft.components.demo_data import generate

    generate(root, classes=3, per_class=40, size=48, seed=0)
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return tiny_images(tmp_path_factory.mktemp("tiny") / "images")


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory, tiny_data):
    """One full local pipeline run: (config, run record, tmp dir)."""
    from graft.core.config import parse_config
    from graft.pipeline.runner import run_pipeline

    tmp = tmp_path_factory.mktemp("e2e")
    # every step runs; the guard off, so the fine-tuned model is the candidate in every run (on
    # tiny data the guard keeps either model; test_said_vs_done covers the kept head)
    cfg = parse_config(tiny_config(tmp, tiny_data, fine_tune__enabled=True, fine_tune__guard=False))
    run = run_pipeline(cfg)
    return cfg, run, tmp


def step_output(run: dict, step: str) -> str:
    """A step's output directory in a run record (run_pipeline's result)."""
    return run["steps"][step]["output"]


def step_summary(run: dict, step: str) -> dict:
    """A step's summary in a run record."""
    return run["steps"][step]["summary"]


def read_manifest(out) -> list[dict]:
    """An ingest output's manifest.jsonl, one dict per image."""
    return [json.loads(line) for line in Path(out, "manifest.jsonl").read_text().splitlines()]


def ingest_at(path, out, **kw):
    """Ingest a folder as most tests do: 32 px, one worker; kw: more DataConfig keys."""
    from graft.components.ingest import ingest
    from graft.core.config import DataConfig

    data = DataConfig(path=str(path), **{"image_size": 32, "num_workers": 1, **kw})
    return ingest(data, str(out))


def table_rows(section: dict) -> dict[str, list[str]]:
    """A report table section's rows by their first cell."""
    return {r[0]: r[1:] for r in section["rows"]}


def all_parsers(parser, path=("graft",)):
    """Every (command path, argparse parser) of the CLI, subcommands included."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from all_parsers(sub, (*path, name))


def shared_across_workers(tmp_path_factory, name: str, make):
    """`make(folder)`'s JSON-able result, computed once per test session by whichever xdist
    worker asks first (pytest-xdist's recipe for a session fixture run once): the others wait
    on the lock and read it. `folder` lives as long as the session, in a temp dir every
    worker shares."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # per session
    done = root / f"{name}.json"
    with FileLock(str(done) + ".lock"):
        if not done.is_file():
            folder = root / name
            folder.mkdir()
            try:
                result = {"ok": make(folder)}
            except BaseException as e:  # every worker's tests fail with the first one's error
                done.write_text(json.dumps({"error": f"{type(e).__name__}: {e}"}))
                raise
            done.write_text(json.dumps(result))
    got = json.loads(done.read_text())
    if "error" in got:
        raise RuntimeError(f"the shared fixture {name!r} failed in another worker: {got['error']}")
    return got["ok"]


AUTO_KEPT = ["train_head.epochs=3", "train_head.patience=0"]


@pytest.fixture(scope="session")
def auto_run(tmp_path_factory):
    """One recipe-auto pipeline run on the tiny data (3 folds, a 2-minute budget) with the
    user's --set AUTO_KEPT over a template, shared by every worker: {"run": the run record,
    "tmp": its folder, "data": the images, "forward": base forward images it ran}. The tests
    of the auto plan, of the geometry evidence and of kept settings read it."""

    def make(tmp: Path) -> dict:
        import yaml

        from graft.components import features as gfeat
        from graft.core.config import load_config
        from graft.pipeline.runner import run_pipeline

        data = tiny_images(tmp / "images")  # tiny_data's images
        raw = tiny_config(tmp, data, recipe="auto", advise__folds=3, train__budget_minutes=2)
        template = tmp / "template.yaml"
        template.write_text(yaml.safe_dump(raw))
        cfg = load_config(template, AUTO_KEPT, template=True)  # the template's keys are Graft's
        before = gfeat.FORWARD_IMAGES["count"]
        run = run_pipeline(cfg)
        forward = gfeat.FORWARD_IMAGES["count"] - before
        return {"run": run, "tmp": str(tmp), "data": str(data), "forward": forward}

    return shared_across_workers(tmp_path_factory, "auto_run", make)
