"""What a user touches first, without training: quiet start-up, self-explaining CLI help,
folder walking for predict, the report's statistics, the unfreeze plan inspect-base shows."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO
from conftest import all_parsers as _all_parsers

from graft.components.report import confidently_wrong, intervals
from graft.components.stats import paired_difference, wilson
from graft.core.paths import image_files
from graft.pipeline.cli import build_parser, main

# What TensorFlow's native start-up prints (absl before InitializeLog, CUDA probing, CPU notes)
NOISE = re.compile(
    r"absl::InitializeLog|cuInit|cuda_platform|cudart_stub|cuda drivers|cpu_feature_guard|"
    r"oneDNN|TF_ENABLE_ONEDNN_OPTS|^[IWEF]\d{4} \d\d:\d\d",
    re.M,
)
GRAFT = [sys.executable, "-m", "graft.pipeline.cli"]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_CPP", "GRAFT_"))}
    return {**env, **extra}


def _run(args: list[str], **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*GRAFT, *args], capture_output=True, text=True, env=_env(**env), timeout=180, cwd=REPO
    )


# ------------------------------------------------------------------ quiet by default


@pytest.mark.parametrize(
    "args",
    [["config", "show", "--config", "configs/demo.yaml"], ["predict", "--help"]],
    ids=["config show", "predict --help"],
)
def test_no_tensorflow_lines_on_stderr(args):
    r = _run(args)
    assert r.returncode == 0, r.stderr
    assert not NOISE.search(r.stderr), r.stderr
    assert r.stderr.strip() == "", f"unexpected stderr: {r.stderr!r}"


def test_a_command_that_imports_tensorflow_is_quiet_and_verbose_brings_it_back(tmp_path):
    """inspect-base imports TF (and builds a base): its stderr holds no native noise; -v shows
    whatever a bare `import tensorflow` prints on this machine."""
    bare = subprocess.run(
        [sys.executable, "-c", "import tensorflow as tf; tf.config.list_physical_devices()"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=180,
    )
    args = ["inspect-base", "mobilenet_v2", "--alpha", "0.35", "--size", "32"]
    quiet = _run(args)
    assert quiet.returncode == 0, quiet.stderr
    assert not NOISE.search(quiet.stderr), quiet.stderr
    assert "unfreezes all" in quiet.stdout
    if NOISE.search(bare.stderr):
        loud = _run(["-v", *args])
        assert loud.returncode == 0 and NOISE.search(loud.stderr), loud.stderr


def test_native_capture_keeps_python_errors_and_replays_on_failure():
    """fd 2 is captured, sys.stderr is not; a failure inside replays what fd 2 got."""
    code = (
        "import os, sys\n"
        "from graft.core.quiet import native_stderr_captured\n"
        "with native_stderr_captured():\n"
        "    os.write(2, b'native-ok\\n')\n"
        "    print('python-visible', file=sys.stderr)\n"
        "try:\n"
        "    with native_stderr_captured():\n"
        "        os.write(2, b'native-before-crash\\n')\n"
        "        raise ValueError('boom')\n"
        "except ValueError:\n"
        "    print('caught', file=sys.stderr)\n"
        "raise SystemExit(int(os.write(2, b'fd2-restored\\n') == 0))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr
    assert "native-ok" not in r.stderr
    assert "python-visible" in r.stderr and "caught" in r.stderr
    assert "native-before-crash" in r.stderr and "fd2-restored" in r.stderr
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(GRAFT_VERBOSE="1")
    )
    assert "native-ok" in r.stderr  # verbose: nothing captured


# ------------------------------------------------------------------ the CLI explains itself


def test_every_option_has_help_and_shows_its_default():
    missing, no_default = [], []
    for path, parser in _all_parsers(build_parser()):
        text = " ".join(parser.format_help().split())
        for a in parser._actions:
            if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            name = "/".join(a.option_strings) or a.dest
            if not a.help:
                missing.append(f"{' '.join(path)} {name}")
            shown = a.default not in (None, False, [], argparse.SUPPRESS)
            if a.option_strings and shown and f"(default: {a.default})" not in text:
                no_default.append(f"{' '.join(path)} {name} (default {a.default!r})")
    assert not missing, "options without help:\n" + "\n".join(missing)
    assert not no_default, "defaults not shown in --help:\n" + "\n".join(no_default)


def test_step_and_backbone_names_are_listed_and_checked(capsys):
    from graft.core.backbones import BACKBONES
    from graft.pipeline.dag import STEP_NAMES

    run_help = dict(_all_parsers(build_parser()))[("graft", "run")].format_help()
    assert all(s in run_help for s in STEP_NAMES)
    ib_help = dict(_all_parsers(build_parser()))[("graft", "inspect-base")].format_help()
    assert all(b in ib_help for b in BACKBONES)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--config", "x.yaml", "--only", "fine-tune"])
    assert "invalid choice: 'fine-tune'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["inspect-base", "mobilenetv2"])


def test_budget_minutes_sets_the_auto_recipes_budget(tmp_path):
    from graft.core.config import load_config
    from graft.pipeline.cli import build_parser, photos_template, train_overrides

    args = build_parser().parse_args(["train", str(tmp_path), "--budget-minutes", "7.5"])
    cfg = load_config(photos_template(), train_overrides(args))
    assert cfg.recipe == "auto" and cfg.train.budget_minutes == 7.5


def test_train_template_is_the_photos_config():
    from graft.core.config import load_config
    from graft.pipeline.cli import photos_template

    assert os.path.samefile(photos_template(), REPO / "configs" / "photos.yaml")
    cfg = load_config(photos_template(), ["data.path=/data"])
    assert cfg.base.name == "mobilenet_v2" and cfg.base.weights == "imagenet"
    assert cfg.data.image_size == 224 and cfg.fine_tune.unfreeze.mode == "all"


# ------------------------------------------------------------------ predict: folders


def test_image_files_walks_folders_and_keeps_named_files(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    (tmp_path / "a" / ".hidden").mkdir()
    for rel in ("a/x.JPG", "a/deep/y.png", "a/notes.txt", "a/.hidden/z.jpg", "a/.w.jpg"):
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "named.dat").write_bytes(b"x")
    got = image_files([str(tmp_path / "a"), str(tmp_path / "named.dat")])
    rel = [os.path.relpath(p, tmp_path) for p in got]
    assert rel == ["a/x.JPG", "a/deep/y.png", "named.dat"]
    with pytest.raises(FileNotFoundError, match="no such file"):
        image_files([str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        image_files([str(tmp_path / "empty")])


def test_predict_without_a_model_says_how(capsys, tmp_path):
    assert main(["predict", str(tmp_path)]) == 2
    assert "--model-dir" in capsys.readouterr().err


# ------------------------------------------------------------------ report statistics


def test_wilson_interval_matches_the_textbook():
    lo, hi = wilson(8, 10)  # Wilson 95 % for 8/10: 0.490 .. 0.943
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    lo, hi = wilson(42, 42)
    assert hi == 1.0 and 0.90 < lo < 0.93  # never the useless [1, 1] of the normal interval
    iv = intervals(np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), np.array([0, 1, 1]), 5)
    assert iv["n"] == 3 and iv["accuracy"][0] == pytest.approx(2 / 3) and "top_2" in iv


def test_paired_difference_sees_pairing():
    rng = np.random.default_rng(1)
    a = rng.random(400) < 0.8
    same = paired_difference(a, a)
    assert same["difference"] == 0 and same["low"] == 0 and same["high"] == 0
    b = a.copy()
    b[np.flatnonzero(a)[:40]] = False  # b misses 40 images a gets right, and gains none
    d = paired_difference(a, b)
    assert d["difference"] == pytest.approx(0.1) and d["a_only"] == 40 and d["b_only"] == 0
    assert 0.06 < d["low"] < 0.1 < d["high"] < 0.14  # paired: far narrower than two Wilsons


def test_confidently_wrong_orders_by_confidence():
    probs = np.array([[0.1, 0.9], [0.6, 0.4], [0.3, 0.7], [0.95, 0.05]])
    y = np.array([0, 0, 0, 1])
    assert [i for i, _, _ in confidently_wrong(probs, y)] == [3, 0, 2]


# ------------------------------------------------------------------ inspect-base = the defaults


def test_inspect_base_suggestions_are_what_fine_tuning_does(capsys):
    """The default line and each suggestion come from plan_unfreeze, which unfreeze() applies."""
    import keras

    from graft.components.model import describe_base, plan_unfreeze, unfreeze_text
    from graft.core.config import FineTuneConfig, UnfreezeConfig

    assert main(["inspect-base", "mobilenet_v2", "--alpha", "0.35", "--size", "32"]) == 0
    out = capsys.readouterr().out
    base, rows = describe_base("mobilenet_v2", 32, {"alpha": 0.35})
    default = plan_unfreeze(base.layers, FineTuneConfig().unfreeze)
    assert f"unfreezes {unfreeze_text(default)}" in out
    assert default["from_index"] == 0 and f"all {len(rows)} layers" in out
    m = re.search(r"from_layer: (block_\d+_expand)\}", out)
    assert m, out
    plan = plan_unfreeze(base.layers, UnfreezeConfig(mode="from_layer", from_layer=m.group(1)))
    assert unfreeze_text(plan) in out
    # and what the text claims is what the model gets
    n_bn = sum(isinstance(layer, keras.layers.BatchNormalization) for layer in base.layers)
    assert default["frozen_batchnorm"] == n_bn


def test_inspect_base_plot_without_graphviz_draws_with_matplotlib(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    try:
        import pydot  # noqa: F401

        pytest.skip("pydot is installed: keras draws the layer graph instead")
    except ImportError:
        pass
    out = tmp_path / "base.png"
    args = ["inspect-base", "mobilenet_v2", "--alpha", "0.35", "--size", "32", "--plot", str(out)]
    assert main(args) == 0
    assert out.stat().st_size > 5000 and out.read_bytes()[:4] == b"\x89PNG"


def test_report_escapes_every_text(tmp_path):
    """Labels, paths and reasons come from user data: none of it may become markup."""
    from PIL import Image

    from graft.components.report import write_report

    plots = {}
    for name in ("confusion_matrix", "per_class_f1", "training_curves"):
        plots[name] = str(tmp_path / f"{name}.png")
        Image.new("RGB", (4, 4), "white").save(plots[name])
    evil = "<script>alert(1)</script>"
    pc = {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    metrics = {"macro_f1": 1.0, "log_loss": 0.1, "ece": 0.0, "per_class": {evil: pc, "b": pc}}
    res = {
        "labels": [evil, "b"],
        "blessed": False,
        "reasons": [f"reason {evil}"],
        "head_only": metrics,
        "candidate": metrics,
        "baseline": None,
        "baseline_version": None,
    }
    iv = {"n": 2, "accuracy": [1.0, 0.3, 1.0], "top_2": [1.0, 0.3, 1.0]}
    path = write_report(
        str(tmp_path),
        res,
        plots,
        intervals_by_model={"head_only": iv, "candidate": iv},
        comparisons={},
        guard={"guard": evil, "kept": evil},
        gallery=[{"true": evil, "predicted": "b", "score": 0.9, "path": evil, "thumb": None}],
        provenance={"model name": evil, "base": evil, "data source": evil},
        top_k=2,
        checks_html="",
    )
    html = open(path, encoding="utf-8").read()
    assert "<script>" not in html and html.count("&lt;script&gt;") >= 8


def test_server_predict_path_imports_no_tensorflow(tmp_path):
    """`graft predict --server` (table or --csv, folders walked) loads no TensorFlow."""
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    (tmp_path / "imgs" / "a" / "x.jpg").write_bytes(b"x")
    code = (
        "import sys\n"
        "from graft.pipeline.cli import main\n"
        "base = ['predict', '--server', '127.0.0.1:1', '--model', 'm', '--timeout', '0.5']\n"
        f"rc1 = main([*base, '--csv', {str(tmp_path / 'o.csv')!r}, {str(tmp_path / 'imgs')!r}])\n"
        f"rc2 = main([*base, {str(tmp_path / 'imgs')!r}])\n"
        "print(rc1, rc2, 'tensorflow' in sys.modules)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120
    )
    assert r.stdout.split() == ["1", "1", "False"], r.stdout + r.stderr


def test_drift_with_nothing_served_imports_no_tensorflow(tmp_path):
    """A first run's drift step (nothing served yet) says so without loading TensorFlow: in its
    own kfp pod it would otherwise pay the import (~5 s) for nothing."""
    code = (
        "import json, sys\n"
        "from graft.core.config import parse_config\n"
        "from graft.pipeline import dag\n"
        f"cfg = parse_config({{'data': {{'path': {str(tmp_path)!r}}},\n"
        f"                    'push': {{'destination': {str(tmp_path / 'models')!r}}}}})\n"
        "ins = {'examples': 'unread', 'validation': 'unread'}\n"
        f"s = dag.step('drift').run(cfg, ins, {str(tmp_path / 'drift')!r})\n"
        "print(json.dumps(s['checked']), 'tensorflow' in sys.modules)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120
    )
    assert r.stdout.split() == ["false", "False"], r.stdout + r.stderr
