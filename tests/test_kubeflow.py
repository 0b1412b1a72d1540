"""Kubeflow: assertions on the compiled YAML, and the compiled pipeline run under kfp.local."""

import glob
import inspect
import json
import os

import pytest
import tensorflow as tf
import yaml
from conftest import REPO, tiny_config

from graft.core.config import load_config, parse_config
from graft.pipeline import dag
from graft.pipeline.kubeflow import compile_pipeline, submit

GPU_STEPS = {"train_head", "fine_tune"}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    cfg = load_config(REPO / "configs" / "kubeflow-gpu.yaml")
    path = tmp_path_factory.mktemp("kfp") / "pipeline.yaml"
    compile_pipeline(cfg, str(path))
    docs = list(yaml.safe_load_all(path.read_text()))
    return cfg, docs[0], (docs[1] if len(docs) > 1 else {})


def _task_specs(spec):
    tasks = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        tasks.update(comp.get("dag", {}).get("tasks", {}))
    return tasks


def _containers(spec):
    execs = spec["deploymentSpec"]["executors"]
    return {
        name.removeprefix("exec-").replace("-", "_"): e["container"] for name, e in execs.items()
    }


def test_step_list_equals_local_runner(compiled):
    _, spec, _ = compiled
    tasks = {t.replace("-", "_") for t in _task_specs(spec) if not t.startswith("condition")}
    assert tasks == set(dag.STEP_NAMES)
    deps = {
        name.replace("-", "_"): {d.replace("-", "_") for d in t.get("dependentTasks", [])}
        for name, t in _task_specs(spec).items()
        if not name.startswith("condition")
    }
    for s in dag.STEPS:
        if s.name != "push":
            assert deps[s.name] == set(s.inputs.values()), s.name


def test_resources_accelerators_on_training_steps_only(compiled):
    cfg, spec, _ = compiled
    containers = _containers(spec)
    for name, c in containers.items():
        res = c.get("resources", {})
        want = cfg.kubeflow.resources[name]
        assert res.get("cpuRequest") == float(want.cpu_request) and res.get("cpuLimit") == float(
            want.cpu_limit
        ), name
        assert res.get("memoryRequest") and res.get("memoryLimit"), name
        acc = res.get("accelerator")
        if name in GPU_STEPS:
            assert acc["resourceType"] == "nvidia-tesla-t4" and int(acc["resourceCount"]) == 1, name
        else:
            assert not acc, name
        assert c["image"] == cfg.kubeflow.image


def test_node_selector_and_toleration_on_gpu_steps(compiled):
    _, spec, platform = compiled
    execs = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    with_k8s = {n.removeprefix("exec-").replace("-", "_"): e for n, e in execs.items()}
    assert set(with_k8s) == GPU_STEPS
    for e in with_k8s.values():
        assert e["nodeSelector"]["labels"] == {
            "cloud.google.com/gke-accelerator": "nvidia-tesla-t4"
        }
        tol = e["tolerations"][0]
        assert (
            tol["key"] == "nvidia.com/gpu"
            and tol["effect"] == "NoSchedule"
            and tol["operator"] == "Exists"
        )


def test_caching_retries_and_if_gate(compiled):
    _, spec, _ = compiled
    tasks = _task_specs(spec)
    for name, t in tasks.items():
        if name.startswith("condition"):
            continue
        step = name.replace("-", "_")
        assert t["cachingOptions"].get("enableCache", False) == (step != "push"), name
        assert t["retryPolicy"]["maxRetryCount"] >= 1, name
    cond = next(t for n, t in spec["root"]["dag"]["tasks"].items() if n.startswith("condition"))
    assert (
        "evaluate-Output" in cond["triggerPolicy"]["condition"]
        and "== true" in cond["triggerPolicy"]["condition"]
    )
    assert "push" in spec["components"][cond["componentRef"]["name"]]["dag"]["tasks"]


def test_wrappers_match_the_dag():
    from graft.pipeline.kfp_components import make_components

    comps = make_components("img")
    for s in dag.STEPS:
        params = set(inspect.signature(comps[s.name].python_func).parameters) - {"config_json"}
        from graft.pipeline.kfp_components import OUTPUT_NAMES

        assert set(s.inputs) <= params and OUTPUT_NAMES[s.name] in params, s.name


def test_submit_dry_run_schedule(capsys):
    from graft.pipeline.cli import main

    assert (
        main(
            [
                "submit",
                "--config",
                str(REPO / "configs" / "kubeflow-gpu.yaml"),
                "--schedule",
                "0 3 * * 1",
                "--experiment",
                "weekly",
                "--dry-run",
            ]
        )
        == 0
    )
    plan = json.loads(capsys.readouterr().out)
    assert plan["cron_expression"] == "0 0 3 * * 1" and plan["experiment"] == "weekly"
    assert plan["kind"] == "recurring_run" and os.path.getsize(plan["pipeline_package"]) > 1000


def test_submit_unreachable_host_is_clear():
    cfg = load_config(REPO / "configs" / "kubeflow-gpu.yaml")
    with pytest.raises(ConnectionError, match="cannot reach the KFP API at http://127.0.0.1:9"):
        submit(cfg, host="http://127.0.0.1:9", experiment=None, run_name=None, schedule=None)


def _run_local(cfg, root):
    from kfp import local

    from graft.pipeline.kubeflow import build_pipeline

    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True
    )
    build_pipeline(cfg)()
    run_dir = sorted(glob.glob(os.path.join(root, "graft-*")))[-1]
    return run_dir


@pytest.mark.slow
def test_pipeline_runs_under_kfp_local(tiny_data, tmp_path):
    raw = tiny_config(tmp_path, tiny_data, fine_tune__epochs=1, train_head__epochs=3)
    cfg = parse_config(raw)
    run_dir = _run_local(cfg, tmp_path / "kfp-root")
    out = json.load(open(os.path.join(run_dir, "evaluate", "executor_output.json")))
    metrics = out["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert {"accuracy", "macro_f1", "log_loss", "ece", "head_only_accuracy"} <= set(metrics)
    cm = out["artifacts"]["confusion"]["artifacts"][0]["metadata"]["confusionMatrix"]
    assert len(cm["rows"]) == 3 and [a["displayName"] for a in cm["annotationSpecs"]] == [
        "circle",
        "square",
        "triangle",
    ]
    assert os.path.getsize(os.path.join(run_dir, "evaluate", "report")) > 10_000
    assert out["parameterValues"]["Output"] is True
    pushed = json.load(open(glob.glob(os.path.join(run_dir, "push", "pushed", "push.json"))[0]))
    assert pushed["pushed"] and os.path.isdir(pushed["destination"])
    exported = glob.glob(os.path.join(run_dir, "export", "exported", "tiny", "*"))[0]
    fn = tf.saved_model.load(exported).signatures["serving_default"]
    blob = open(sorted(glob.glob(str(tiny_data / "circle" / "*.jpg")))[0], "rb").read()
    assert fn(image_bytes=tf.constant([blob]))["scores"].shape == (1, 3)

    assert metrics["accuracy"] < 1.0  # so min_accuracy 1.0 is impossible for this model
    raw2 = tiny_config(
        tmp_path,
        tiny_data,
        train_head__epochs=1,
        fine_tune__enabled=False,
        evaluate__min_accuracy=1.0,
    )
    run_dir2 = _run_local(parse_config(raw2), tmp_path / "kfp-root2")
    out2 = json.load(open(os.path.join(run_dir2, "evaluate", "executor_output.json")))
    assert out2["parameterValues"]["Output"] is False
    assert not os.path.exists(os.path.join(run_dir2, "push"))
    from graft.components.push import versions

    assert versions(cfg.push.destination, "tiny") == [pushed["version"]]
