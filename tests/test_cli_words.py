"""Issue 28, items 5, 8 and 10: one CLI vocabulary, listings a person can read, and the small
honesty items (no browser, quiet libjpeg, package data). No training here: the listings read a
registry written by push's own functions, or the session's `pipeline_run`."""

from __future__ import annotations

import argparse
import os

import pytest
from conftest import all_parsers as _all_parsers

from graft.pipeline.cli import advise_config, build_parser, main, parse_args


def _visible_options(parser) -> set[str]:
    return {o for a in parser._actions if a.help is not argparse.SUPPRESS for o in a.option_strings}


# ------------------------------------------------------------------ item 5: one vocabulary


def test_advise_takes_what_train_takes_and_names_the_model_after_the_folder(tmp_path):
    data = tmp_path / "textures"
    data.mkdir()
    flags = ["--weights", "demo", "--base", "mobilenet_v2", "--budget-minutes", "3"]
    train = parse_args(["train", str(data), *flags])
    advise = parse_args(["advise", str(data), *flags])
    cfg = advise_config(advise)
    assert cfg.export.model_name == "textures"  # not the default config's "graft"
    assert cfg.base.weights == "demo" and cfg.base.name == "mobilenet_v2"
    assert cfg.train.budget_minutes == 3 and cfg.recipe == "auto"
    assert cfg.data.image_size == 224  # the same template as train: configs/photos.yaml
    from graft.core.config import load_config
    from graft.pipeline.cli import photos_template, train_overrides

    assert cfg == load_config(photos_template(), train_overrides(train))
    named = advise_config(parse_args(["advise", str(data), "--model-name", "tex"]))
    assert named.export.model_name == "tex"


def test_argparse_errors_print_the_subcommands_own_usage(capsys, tmp_path):
    for argv, usage in (
        (["advise", str(tmp_path), "--bogus"], "usage: graft advise"),
        (["advise", str(tmp_path / "missing")], "usage: graft advise"),
        (["models", "list", "--bogus"], "usage: graft models list"),
    ):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith(usage), (argv, err)


def test_one_spelling_per_idea_old_ones_hidden_but_working(tmp_path):
    for path, parser in _all_parsers(build_parser()):
        shown = _visible_options(parser)
        assert not shown & {"--model", "--name", "--output"}, (path, shown)
        usage = parser.format_help()
        assert "--output" not in usage and " --name " not in usage, path
    old_and_new = [
        (["train", str(tmp_path), "--name", "m"], ["train", str(tmp_path), "--model-name", "m"]),
        (["predict", "--model", "m", "x.jpg"], ["predict", "--model-name", "m", "x.jpg"]),
        (["models", "list", "--model", "m"], ["models", "list", "--model-name", "m"]),
        (["rollback", "--model", "m", "--to", "3"], ["rollback", "--model-name", "m", "--to", "3"]),
        (
            ["compile", "-c", "c.yaml", "--output", "p.yaml"],
            ["compile", "-c", "c.yaml", "--out", "p.yaml"],
        ),
    ]
    for old, new in old_and_new:
        a, b = vars(parse_args(old)), vars(parse_args(new))
        a.pop("_parser"), b.pop("_parser")
        assert a == b, (old, a, b)
    legacy = parse_args(["models", "show", "flowers", "7"])
    assert (legacy.version, legacy.legacy_version) == ("flowers", "7")


def test_train_help_shows_the_config_default_once():
    text = " ".join(dict(_all_parsers(build_parser()))[("graft", "train")].format_help().split())
    config_help = text[text.index("--config TEMPLATE, -c") : text.index("--set KEY=VALUE override")]
    assert config_help.count("default") == 1, config_help
    assert "configs/photos.yaml" in config_help and "/assets/" not in config_help


# ------------------------------------------------------------------ item 10: small honesty items


def test_libjpeg_noise_is_filtered_and_verbose_brings_it_back():
    """What native code writes to fd 2 passes through, except libjpeg's damaged-JPEG lines and
    TF's NodeDef version-skew line; Python's own stderr is untouched. -v: all of it."""
    import subprocess
    import sys

    code = (
        "import os, sys\n"
        "from graft.core.quiet import native_stderr_filtered\n"
        "with native_stderr_filtered():\n"
        "    os.write(2, b'E0000 00:00:1796544182.389456    1572 jpeg_mem.cc:331] Premature end"
        " of JPEG data. Stopped at line 30/40\\n')\n"
        "    os.write(2, b'Corrupt JPEG data: 3 extraneous bytes before marker 0xd9\\n')\n"
        "    os.write(2, b'E0000 00:00:1.0    2361 node_def_util.cc:682] NodeDef mentions "
        "attribute use_unbounded_threadpool which is not in the op definition: Op<x>\\n')\n"
        "    os.write(2, b'a real native error\\n')\n"
        "    print('python line', file=sys.stderr)\n"
        "os.write(2, b'after\\n')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAFT_")}
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert "JPEG" not in quiet.stderr and "NodeDef" not in quiet.stderr, quiet.stderr
    for line in ("a real native error", "python line", "after"):
        assert line in quiet.stderr
    env["GRAFT_VERBOSE"] = "1"
    loud = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert "Premature end of JPEG data" in loud.stderr and "Corrupt JPEG" in loud.stderr


def test_report_open_without_a_browser_says_so_and_prints_the_path(tmp_path, capsys, monkeypatch):
    import json
    import webbrowser

    run = tmp_path / "runs" / "20260101-000000-0001"
    (run / "evaluate").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"status": "succeeded", "steps": {}}))
    (run / "evaluate" / "report.html").write_text("<html></html>")
    for var in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(webbrowser, "_tryorder", [])  # this machine: no browser registered
    assert main(["report", "--open", "--run-root", str(tmp_path / "runs")]) == 0
    out, err = capsys.readouterr()
    path = str((run / "evaluate" / "report.html").absolute())
    assert out.strip() == path
    assert "no web browser available" in err and path in " ".join(err.split())


def test_every_folder_of_the_package_is_declared():
    """setuptools warns once per file ('Package graft.assets is absent from the packages
    configuration') for a folder inside a package that `packages` does not list."""
    import tomllib

    from conftest import REPO

    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(tool["packages"])
    dirs = {"graft": REPO / "graft", **{k: REPO / v for k, v in tool["package-dir"].items()}}
    for package, folder in dirs.items():
        for sub in folder.iterdir():
            if sub.is_dir() and not sub.name.startswith((".", "__")) and any(sub.iterdir()):
                assert f"{package}.{sub.name}" in declared, f"{package}.{sub.name}"
    assert tool["package-data"].get("graft.assets") == ["*"]


def test_the_demo_is_deterministic_by_config():
    """make demo gives the same numbers on every fresh run: op determinism and fixed seeds
    (train.deterministic; tests/test_determinism.py shows it gives bit-identical models)."""
    from conftest import REPO

    from graft.core.config import load_config

    cfg = load_config(str(REPO / "configs" / "demo.yaml"), [])
    assert cfg.train.deterministic and cfg.recipe == "manual"


def test_the_report_shows_drift_without_keying_on_it(tmp_path):
    """Drift re-runs whenever the served version changes (after every push); evaluate only
    shows its verdict, so its fingerprint does not depend on drift's, while push (never cached)
    records it in the registry."""
    from graft.core.config import parse_config
    from graft.pipeline import dag
    from graft.pipeline.runner import fingerprint

    evaluate = dag.step("evaluate")
    assert evaluate.shows == {"drift": "drift"} and "drift" not in evaluate.inputs
    assert dag.step("push").inputs["drift"] == "drift" and not dag.step("push").cacheable
    cfg = parse_config({"data": {"path": str(tmp_path)}, "push": {"destination": str(tmp_path)}})
    fps = {k: "0" * 16 for k in evaluate.inputs}
    dirs = {k: str(tmp_path / k) for k in evaluate.inputs}
    before = fingerprint(evaluate, cfg, fps, {**dirs, "drift": str(tmp_path / "drift-a")})
    after = fingerprint(evaluate, cfg, fps, {**dirs, "drift": str(tmp_path / "drift-b")})
    assert before == after


def test_runs_list_names_the_step_a_short_run_stopped_after():
    """`graft advise` runs the steps up to advise: runs list says so, without naming steps."""
    from graft.pipeline import dag
    from graft.pipeline.cli import run_row

    steps = dag.STEP_NAMES[: dag.STEP_NAMES.index("advise") + 1]
    run = {"status": "succeeded", "steps": {s: {"summary": {}} for s in steps}}
    assert run_row(run)[2] == "advise only"
    run["steps"] = {s: {"summary": {}} for s in dag.STEP_NAMES}
    assert run_row(run)[2] == "succeeded"
