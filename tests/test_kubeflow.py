"""Kubeflow: assertions on the compiled YAML, and the compiled pipeline run under kfp.local."""

import glob
import inspect
import json
import os
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, tiny_config

from graft.core.config import load_config, parse_config
from graft.pipeline import dag
from graft.pipeline.kubeflow import compile_pipeline, submit

GPU_STEPS = {"advise", "train_head", "fine_tune"}
TFJOB_STEPS = {
    "train_head",
    "fine_tune",
}  # advise runs on one GPU pod: its probes are not distributed


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
    fresh = {f"{s.name}_freshness" for s in dag.STEPS if s.external_key}
    assert tasks == set(dag.STEP_NAMES) | {"resolve_config"} | fresh
    deps = {
        name.replace("-", "_"): {d.replace("-", "_") for d in t.get("dependentTasks", [])}
        for name, t in _task_specs(spec).items()
        if not name.startswith("condition")
    }
    for s in dag.STEPS:
        if s.when is None:  # a gated step reads its inputs through its condition's inputs
            want = set(s.inputs.values()) | set(s.shows.values()) | {"resolve_config"}
            key = {f"{s.name}_freshness"} & fresh
            assert deps[s.name] == want | key, s.name
            assert not key or deps[f"{s.name}_freshness"] == want, s.name


def test_pipeline_description_is_the_dag_order(compiled):
    _, spec, _ = compiled
    assert spec["pipelineInfo"]["description"] == "Graft: " + " -> ".join(dag.STEP_NAMES)


def test_run_parameters_are_typed_and_default_to_the_config(compiled):
    from graft.pipeline.kubeflow import PARAMETERS

    cfg, spec, _ = compiled
    params = spec["root"]["inputDefinitions"]["parameters"]
    want = {
        "data_path": ("STRING", cfg.data.path),
        "push_destination": ("STRING", cfg.push.destination),
        "recipe": ("STRING", cfg.recipe),
        "budget_minutes": ("NUMBER_DOUBLE", cfg.train.budget_minutes),
        "train_head_epochs": ("NUMBER_INTEGER", cfg.train_head.epochs),
        "train_head_learning_rate": ("NUMBER_DOUBLE", cfg.train_head.learning_rate),
        "fine_tune_enabled": ("BOOLEAN", cfg.fine_tune.enabled),
        "fine_tune_epochs": ("NUMBER_INTEGER", cfg.fine_tune.epochs),
        "fine_tune_learning_rate": ("NUMBER_DOUBLE", cfg.fine_tune.learning_rate),
    }
    assert set(want) == set(PARAMETERS) and set(params) == set(want) | {"config_json"}
    for name, (kind, default) in want.items():
        assert params[name]["parameterType"] == kind, name
        assert params[name]["defaultValue"] == default, name


def test_resources_accelerators_on_training_steps_only(compiled):
    cfg, spec, _ = compiled
    containers = _containers(spec)
    for name, c in containers.items():
        res = c.get("resources", {})
        if name == "resolve_config" or name.endswith("_freshness"):  # small, not a step
            assert res["cpuRequest"] == 0.5 and "accelerator" not in res, name
            assert c["image"] == cfg.kubeflow.image
            continue
        want = dag.resources(cfg, dag.step(name))
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


def test_kubeflow_resources_replace_a_steps_own(compiled):
    """configs/kubeflow-gpu.yaml sets ingest's and the training steps' resources; the other
    steps keep the ones their Step declares."""
    cfg, spec, _ = compiled
    containers = _containers(spec)
    assert set(cfg.kubeflow.resources) == {"ingest", "train_head", "fine_tune"}
    assert containers["ingest"]["resources"]["resourceCpuRequest"] == "8"  # the config's
    assert containers["train_head"]["resources"]["resourceMemoryLimit"] == "24Gi"
    for s in dag.STEPS:
        if s.name not in cfg.kubeflow.resources:
            res = containers[s.name]["resources"]
            assert res["resourceCpuRequest"] == s.resources.cpu_request, s.name
            assert res["resourceMemoryLimit"] == s.resources.memory_limit, s.name


def test_a_misspelt_step_under_kubeflow_resources_is_named():
    from graft.core.config import ConfigError
    from graft.pipeline.runner import run_pipeline

    cfg = load_config(
        REPO / "configs" / "kubeflow-gpu.yaml", ["kubeflow.resources.trian_head.gpu=true"]
    )
    want = r"kubeflow.resources.trian_head: unknown step \(did you mean 'train_head'\?\)"
    with pytest.raises(ConfigError, match=want):
        compile_pipeline(cfg, "/dev/null")
    with pytest.raises(ConfigError, match=want):  # a local run refuses it too, before any step
        run_pipeline(cfg)


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
        fresh = step.endswith("_freshness")  # a step's external key: computed every run
        assert t["cachingOptions"].get("enableCache", False) == (step != "push" and not fresh)
        assert t["retryPolicy"]["maxRetryCount"] >= 1, name
    for s in dag.STEPS:  # a step that reads the data folder or the served version is cached
        # only under the key its freshness task computed this run (kfp keys on parameters)
        fed = tasks[s.name.replace("_", "-")]["inputs"]["parameters"].get("freshness")
        assert (fed is not None) == (s.external_key is not None), s.name
        if fed:
            assert fed["taskOutputParameter"]["producerTask"] == f"{s.name}-freshness"
    cond = next(t for n, t in spec["root"]["dag"]["tasks"].items() if n.startswith("condition"))
    (when,) = {s.when for s in dag.STEPS if s.when}  # one gate: evaluate's blessing
    assert cond["triggerPolicy"]["condition"] == (
        f"inputs.parameter_values['pipelinechannel--{when.step}-Output'] == true"
    )
    gated = spec["components"][cond["componentRef"]["name"]]["dag"]["tasks"]
    assert set(gated) == {"export", "push"}  # only a blessed candidate is exported and pushed


def test_components_are_generated_from_the_dag(compiled):
    """Each step's component: `graft step NAME`, exactly its Step's inputs and outputs, typed
    as the Step declares, and the bools other steps' `when` reads as its output parameters."""
    _, spec, _ = compiled
    execs = spec["deploymentSpec"]["executors"]
    for s in dag.STEPS:
        comp = spec["components"][f"comp-{s.name.replace('_', '-')}"]
        inputs, outputs = comp["inputDefinitions"], comp.get("outputDefinitions", {})
        assert set(inputs.get("artifacts", {})) == set(s.inputs) | set(s.shows), s.name
        for name, src in {**s.inputs, **s.shows}.items():
            want = dag.step(src).artifact[dag.output_name(dag.step(src))].type
            assert inputs["artifacts"][name]["artifactType"]["schemaTitle"] == f"system.{want}"
        params = {"config_json"} | ({"tfjob_json"} if s.distributed else set())
        params |= {"freshness"} if s.external_key else set()
        assert set(inputs["parameters"]) == params, s.name
        assert {n: a["artifactType"]["schemaTitle"] for n, a in outputs["artifacts"].items()} == {
            n: f"system.{o.type}" for n, o in s.artifact.items()
        }, s.name
        gated = any(t.when and t.when.step == s.name for t in dag.STEPS)
        assert set(outputs.get("parameters", {})) == ({"Output"} if gated else set()), s.name
        container = execs[comp["executorLabel"]]["container"]
        assert container["command"] == ["graft", "step", s.name]
        assert container["args"] == ["--executor-input", "{{$}}"]
        if s.external_key:  # its key task reads the same inputs and returns the key
            key = spec["components"][f"comp-{s.name.replace('_', '-')}-freshness"]
            assert set(key["inputDefinitions"].get("artifacts", {})) == set(s.inputs) | set(s.shows)
            assert key["outputDefinitions"]["parameters"]["Output"]["parameterType"] == "STRING"
            container = execs[key["executorLabel"]]["container"]
            assert container["command"] == ["graft", "step", s.name, "--freshness"]
    assert {s.name for s in dag.STEPS if s.external_key} == {"ingest", "drift", "evaluate"}
    assert dag.gate_outputs(dag.step("evaluate")) == ["blessed"]


def test_a_dashboard_parameter_changed_from_the_compiled_config_is_kept_over_advise():
    """Under recipe auto a changed run parameter is the user's setting (advise.keep); one left at
    its compiled default is not, and advise may plan it."""
    from graft.pipeline.kfp_runtime import PARAMETERS, resolve_config
    from graft.pipeline.kubeflow import parameter_defaults

    cfg = parse_config({"recipe": "auto", "data": {"path": "/data"}, "advise": {"keep": []}})
    compiled = json.dumps(cfg.to_dict())
    params = parameter_defaults(cfg)
    assert set(params) == set(PARAMETERS)
    same = parse_config(json.loads(resolve_config(compiled, params)))
    assert same.advise.keep == [] and same == cfg
    params |= {"train_head_epochs": 7, "fine_tune_learning_rate": 3e-5}
    changed = parse_config(json.loads(resolve_config(compiled, params)))
    assert changed.advise.keep == ["fine_tune.learning_rate", "train_head.epochs"]
    assert changed.train_head.epochs == 7 and changed.fine_tune.learning_rate == 3e-5


def test_every_declared_view_has_a_filler():
    from graft.pipeline.kfp_runtime import VIEWS

    for s in dag.STEPS:
        views = [o.view for o in s.artifact.values()]
        assert views.count(None) == 1, s.name  # one output directory, the others its views
        assert all(v in VIEWS for v in views if v), s.name


def test_export_task_outputs_the_edge_models(compiled):
    """export.tflite's files are an output artifact of their own (filled under kfp.local below)."""
    _, spec, _ = compiled
    outs = spec["components"]["comp-export"]["outputDefinitions"]["artifacts"]
    assert outs["edge_models"]["artifactType"]["schemaTitle"] == "system.Model"
    assert outs["exported"]["artifactType"]["schemaTitle"] == "system.Model"


def test_submit_dry_run_schedule(capsys):
    from graft.pipeline.cli import main

    before = set(glob.glob("/tmp/graft-kfp-*"))
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
    assert plan["kind"] == "recurring_run" and plan["pipeline_compiled"]
    assert plan["run_name"].startswith("graft-") and plan["run_name"] != "graft-run"
    assert set(glob.glob("/tmp/graft-kfp-*")) <= before  # the compiled package is cleaned up


def test_submit_unreachable_host_is_clear():
    cfg = load_config(REPO / "configs" / "kubeflow-gpu.yaml")
    with pytest.raises(ConnectionError, match="cannot reach the KFP API at http://127.0.0.1:9"):
        submit(cfg, host="http://127.0.0.1:9", experiment=None, run_name=None, schedule=None)


def _run_local(cfg, root, monkeypatch, **parameters):
    """The compiled pipeline under kfp.local's SubprocessRunner, with this venv's `graft`.

    That runner refuses a command that is not kfp's own executor (it assumes such code is in
    the image only); `graft step` runs kfp's executor over Graft, which this venv has, so the
    refusal is lifted for the `graft step` entrypoint alone."""
    from kfp import local
    from kfp.local.subprocess_task_handler import SubprocessTaskHandler

    from graft.pipeline.kfp_components import ENTRYPOINT
    from graft.pipeline.kubeflow import build_pipeline

    refuse = SubprocessTaskHandler.validate_not_container_component
    monkeypatch.setattr(
        SubprocessTaskHandler,
        "validate_not_container_component",
        lambda self, cmd: None if cmd[: len(ENTRYPOINT)] == ENTRYPOINT else refuse(self, cmd),
    )
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True
    )
    build_pipeline(cfg)(**parameters)
    run_dir = sorted(glob.glob(os.path.join(root, "graft-*")))[-1]
    return run_dir


@pytest.mark.slow
def test_pipeline_runs_under_kfp_local(tiny_data, tmp_path, monkeypatch):
    """Every task of the compiled pipeline, through `graft step`, with real artifacts: the
    smallest run (32 px, one head epoch) that still exports an edge model (the kfp-only view
    that ships it) and pushes. Fine-tuning is off: its task still runs and hands the model on,
    and its training is the local runner's, which tests/test_pipeline_e2e.py covers."""
    raw = tiny_config(
        tmp_path,
        tiny_data,
        data__image_size=32,
        train_head__epochs=1,
        fine_tune__enabled=False,
        export__tflite=["float32"],
    )
    cfg = parse_config(raw)
    run_dir = _run_local(cfg, tmp_path / "kfp-root", monkeypatch)
    edge = json.load(open(os.path.join(run_dir, "export", "executor_output.json")))
    edge = edge["artifacts"]["edge_models"]["artifacts"][0]["metadata"]
    assert edge["variants"] == "float32" and edge["float32_bytes"] > 0
    shipped = sorted(os.listdir(os.path.join(run_dir, "export", "edge_models")))
    assert shipped == ["labels.txt", "tflite.json", "tiny_float32.tflite"]
    out = json.load(open(os.path.join(run_dir, "evaluate", "executor_output.json")))
    metrics = out["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert {"accuracy", "macro_f1", "log_loss", "ece", "head_only_accuracy"} <= set(metrics)
    tuned = json.load(open(os.path.join(run_dir, "fine-tune", "executor_output.json")))
    assert tuned["artifacts"]["model"]["artifacts"][0]["metadata"]["guard"] == "disabled"
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
    # the exported artifact is the SavedModel export reloaded in its pod and served test images'
    # bytes with (parity with Keras), and the one push copied
    exported = json.load(open(os.path.join(run_dir, "export", "executor_output.json")))
    exported = exported["artifacts"]["exported"]["artifacts"][0]["metadata"]
    assert 0 <= exported["parity_max_abs_diff"] <= cfg.export.parity_tolerance
    (version,) = glob.glob(os.path.join(run_dir, "export", "exported", "tiny", "*"))
    assert os.path.isfile(os.path.join(version, "saved_model.pb"))
    assert os.path.basename(pushed["destination"]) == os.path.basename(version)
    # the freshness tasks computed the local runner's keys: the data folder's fingerprint, and
    # no served version yet (evaluate's, before this run pushed)
    from graft.components.ingest import source_fingerprint

    def key(task):
        out = json.load(open(os.path.join(run_dir, task, "executor_output.json")))
        return out["parameterValues"]["Output"]

    assert key("ingest-freshness") == source_fingerprint(cfg.data)
    assert key("drift-freshness") == key("evaluate-freshness") == "None"


@pytest.mark.slow
def test_run_parameters_override_the_compiled_config_under_kfp_local(
    tiny_data, tmp_path, monkeypatch
):
    """The compiled settings, with two run parameters overridden as a dashboard user would;
    min_accuracy 1.0 is more than this model reaches: not blessed, nothing exported or pushed."""
    raw2 = tiny_config(tmp_path, tiny_data, train_head__epochs=3, evaluate__min_accuracy=1.0)
    run_dir2 = _run_local(
        parse_config(raw2),
        tmp_path / "kfp-root2",
        monkeypatch,
        train_head_epochs=1,
        fine_tune_enabled=False,
    )
    head = json.load(open(os.path.join(run_dir2, "train-head", "executor_output.json")))
    assert head["artifacts"]["model"]["artifacts"][0]["metadata"]["epochs"] == 1
    tuned = json.load(open(os.path.join(run_dir2, "fine-tune", "executor_output.json")))
    assert tuned["artifacts"]["model"]["artifacts"][0]["metadata"]["guard"] == "disabled"
    out2 = json.load(open(os.path.join(run_dir2, "evaluate", "executor_output.json")))
    metrics = out2["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert metrics["accuracy"] < 1.0 and out2["parameterValues"]["Output"] is False
    assert not os.path.exists(os.path.join(run_dir2, "export"))
    assert not os.path.exists(os.path.join(run_dir2, "push"))
    from graft.components.registry import versions

    assert versions(str(tmp_path / "models"), "tiny") == []


# ------------------------------------------------------------ several machines: TFJob


@pytest.fixture(scope="module")
def compiled_workers(tmp_path_factory):
    """configs/kubeflow-gpu.yaml with kubeflow.workers: 2 and 2 GPUs per worker, compiled."""
    cfg = load_config(
        REPO / "configs" / "kubeflow-gpu.yaml",
        ["kubeflow.workers=2", "kubeflow.gpus_per_worker=2"],
    )
    path = tmp_path_factory.mktemp("kfp-tfjob") / "pipeline.yaml"
    compile_pipeline(cfg, str(path))
    docs = list(yaml.safe_load_all(path.read_text()))
    return cfg, docs[0], (docs[1] if len(docs) > 1 else {}), path.read_text()


def _tfjobs(spec) -> dict[str, dict]:
    """step -> the TFJob compiled into its task (the constant `tfjob_json` input)."""
    out = {}
    for name, t in _task_specs(spec).items():
        param = t.get("inputs", {}).get("parameters", {}).get("tfjob_json")
        if param:
            out[name.replace("-", "_")] = json.loads(param["runtimeValue"]["constant"])
    return out


def test_workers_2_compiles_a_tfjob_into_each_training_step(compiled_workers):
    import jsonschema
    import kubernetes_validate

    cfg, spec, _, _ = compiled_workers
    jobs = _tfjobs(spec)
    assert set(jobs) == {s.name for s in dag.STEPS if s.distributed} == TFJOB_STEPS
    schema = json.loads((REPO / "k8s" / "schemas" / "tfjob-v1.schema.json").read_text())
    for step, job in jobs.items():
        jsonschema.Draft202012Validator(schema).validate(job)
        assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "TFJob"
        assert set(job["spec"]["tfReplicaSpecs"]) == {"Worker"}  # worker 0 is the chief
        worker = job["spec"]["tfReplicaSpecs"]["Worker"]
        assert worker["replicas"] == 2
        pod = worker["template"]["spec"]
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "w"},
             "template": worker["template"]},
            "1.33.0",
            strict=True,
        )  # fmt: skip
        (c,) = pod["containers"]
        assert c["name"] == "tensorflow" and c["image"] == cfg.kubeflow.image
        assert c["command"] == ["python3", "-m", "graft.pipeline.tfjob"]
        assert c["args"] == ["--step", step]
        res = dag.resources(cfg, dag.step(step))
        assert c["resources"]["limits"] == {
            "cpu": res.cpu_limit,
            "memory": res.memory_limit,
            "nvidia.com/gpu": 2,
        }
        assert c["resources"]["requests"] == {"cpu": res.cpu_request, "memory": res.memory_request}
        assert pod["nodeSelector"] == cfg.kubeflow.gpu.node_selector
        assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_workers_2_launcher_pods_are_small_and_gpu_free(compiled_workers):
    """The task that waits on the TFJob holds no GPU: the workers do."""
    _, spec, platform, _ = compiled_workers
    containers = _containers(spec)
    for name in TFJOB_STEPS:
        res = containers[name]["resources"]
        assert not res.get("accelerator"), name
        assert res["resourceCpuLimit"] == "1" and res["resourceMemoryLimit"] == "2Gi", name
    k8s = platform.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {})
    left = {n.removeprefix("exec-").replace("-", "_") for n in k8s.get("executors", {})}
    assert not left & TFJOB_STEPS, "no GPU node selector left on the launchers"


def test_workers_1_keeps_the_single_pod(compiled):
    _, spec, _ = compiled
    assert not _tfjobs(spec)
    assert "TFJob" not in json.dumps(spec)


def test_workers_2_needs_a_gs_pipeline_root():
    cfg = load_config(
        REPO / "configs" / "kubeflow-gpu.yaml",
        ["kubeflow.workers=2", "kubeflow.pipeline_root=null"],
    )
    with pytest.raises(ValueError, match="needs kubeflow.pipeline_root on gs://"):
        compile_pipeline(cfg, "/dev/null")


def test_distributed_wrappers_take_a_tfjob():
    from graft.pipeline.kfp_components import make_components

    comps = make_components("img")
    for s in dag.STEPS:
        params = inspect.signature(comps[s.name].python_func).parameters
        assert ("tfjob_json" in params) == s.distributed, s.name


class _FakeTFJobs:
    """The CustomObjectsApi calls run_tfjob makes, over a list of states to report."""

    def __init__(self, states, exists=None):
        self.states, self.exists, self.calls = list(states), exists, []

    def create_namespaced_custom_object(self, *args):
        from kubernetes.client.exceptions import ApiException

        self.calls.append("create")
        if self.exists:
            self.exists = None
            raise ApiException(status=409, reason="AlreadyExists")

    def get_namespaced_custom_object(self, *args):
        from kubernetes.client.exceptions import ApiException

        self.calls.append("get")
        st = self.states.pop(0) if self.states else "Running"
        if st == "Gone":
            raise ApiException(status=404, reason="NotFound")
        return {"status": {"conditions": [
            {"type": "Created", "status": "True"},
            {"type": st, "status": "True", "message": f"{st} because"},
        ]}}  # fmt: skip

    def delete_namespaced_custom_object(self, *args):
        self.calls.append("delete")


def _body():
    return {"metadata": {"name": "graft-train-head-abc", "namespace": "ns"}}


def test_run_tfjob_waits_for_success_and_reports_failure():
    from graft.pipeline.tfjob import run_tfjob, state

    api = _FakeTFJobs(["Running", "Running", "Succeeded"])
    assert state(run_tfjob(_body(), 60, 0, api)) == "Succeeded"
    assert api.calls == ["create", "get", "get", "get"]
    with pytest.raises(RuntimeError, match="failed: Created: ; Failed: Failed because"):
        run_tfjob(_body(), 60, 0, _FakeTFJobs(["Running", "Failed"]))
    api = _FakeTFJobs([])
    with pytest.raises(TimeoutError, match="still running"):
        run_tfjob(_body(), -1.0, 0, api)
    assert api.calls[-1] == "delete"
    assert state({"status": {"conditions": [{"type": "Succeeded", "status": "False"}]}}) is None


def test_run_tfjob_replaces_an_earlier_failed_try_and_rejoins_a_running_one():
    from graft.pipeline.tfjob import run_tfjob

    # a kfp retry: the TFJob of the failed try is deleted, waited out, and made again
    api = _FakeTFJobs(["Failed", "Running", "Gone", "Succeeded"], exists=True)
    run_tfjob(_body(), 60, 0, api)
    assert api.calls == ["create", "get", "delete", "get", "get", "create", "get"]
    # a relaunched task pod: the TFJob still runs, so it waits for that one
    api = _FakeTFJobs(["Running", "Succeeded"], exists=True)
    run_tfjob(_body(), 60, 0, api)
    assert api.calls == ["create", "get", "get"]
    # a retry after a try that copied the output, removed its staging copy and then failed:
    # the succeeded job is made again (rejoined, it left every retry an empty output)
    api = _FakeTFJobs(["Succeeded", "Gone", "Succeeded"], exists=True)
    run_tfjob(_body(), 60, 0, api, output_there=lambda: False)
    assert api.calls == ["create", "get", "delete", "get", "create", "get"]
    api = _FakeTFJobs(["Succeeded", "Succeeded"], exists=True)
    run_tfjob(_body(), 60, 0, api, output_there=lambda: True)  # output there: rejoined
    assert api.calls == ["create", "get", "get"]


def test_tfjob_names_are_dns_1035_and_stable_per_output():
    import re

    from graft.pipeline.tfjob import job_name

    a = job_name("fine_tune", "gs://b/root/run-1/fine-tune/model")
    assert a == job_name("fine_tune", "gs://b/root/run-1/fine-tune/model")
    assert a != job_name("fine_tune", "gs://b/root/run-2/fine-tune/model")
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", a) and len(a) <= 63
