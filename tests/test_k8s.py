"""k8s manifests: rendered with kustomize, validated offline against Kubernetes JSON schemas."""

import json
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from conftest import REPO

from graft.core.config import load_config

K8S = REPO / "k8s"
K8S_VERSION = "1.33.0"
KUSTOMIZE = shutil.which("kubectl")
needs_kustomize = pytest.mark.skipif(
    KUSTOMIZE is None,
    reason="kubectl (with kustomize) is not installed; the pure-Python base-file check still runs",
)


def render(path: Path) -> list[dict]:
    out = subprocess.run(
        [KUSTOMIZE, "kustomize", str(path)], check=True, capture_output=True, text=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def params() -> dict[str, str]:
    return dict(
        line.split("=", 1)
        for line in (K8S / "base" / "params.env").read_text().split()
        if "=" in line
    )


def _deployment(docs):
    return next(d for d in docs if d["kind"] == "Deployment")


@needs_kustomize
@pytest.mark.parametrize("overlay", ["overlays/cpu", "overlays/gpu", "retraining", "training"])
def test_every_rendered_manifest_validates(overlay):
    docs = render(K8S / overlay)
    assert docs
    for d in docs:
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)


def test_base_files_validate_without_kustomize():
    files, checked = [], []
    for folder in ("base", "retraining", "training"):
        found = [f for f in (K8S / folder).glob("*.yaml") if f.name != "tfjob.yaml"]
        assert found, f"k8s/{folder}/*.yaml matched nothing: the check would pass vacuously"
        files += found
    for f in sorted(files):
        for d in yaml.safe_load_all(f.read_text()):
            if d and d.get("kind") != "Kustomization":
                kubernetes_validate.validate(d, K8S_VERSION, strict=True)
                checked.append(d["kind"])
    assert {"Deployment", "Service", "CronJob", "Role"} <= set(checked), checked


# ---------------------------------------------------------------- the TFJob (kubeflow.workers > 1)

TFJOB_SCHEMA = K8S / "schemas" / "tfjob-v1.schema.json"


def validate_tfjob(doc: dict) -> None:
    """The TFJob CRD's schema (no Kubernetes schema covers it offline), then its pod template
    against the Kubernetes PodTemplate schema, strictly."""
    import jsonschema

    jsonschema.Draft202012Validator(json.loads(TFJOB_SCHEMA.read_text())).validate(doc)
    for replica in doc["spec"]["tfReplicaSpecs"].values():
        pod_template = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": "replica"},
            "template": replica["template"],
        }
        kubernetes_validate.validate(pod_template, K8S_VERSION, strict=True)


def _container(doc: dict) -> dict:
    return doc["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]


def _tfjob_doc() -> dict:
    return next(d for d in yaml.safe_load_all((K8S / "training" / "tfjob.yaml").read_text()) if d)


def test_tfjob_manifest_validates_against_the_crd_schema():
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(json.loads(TFJOB_SCHEMA.read_text()))
    validate_tfjob(_tfjob_doc())


@pytest.mark.parametrize(
    ("break_it", "error"),
    [
        # the operator sets TF_CONFIG only in the container named "tensorflow"
        (lambda d: _container(d).update(name="main"), "does not contain items matching"),
        (
            lambda d: d["spec"]["tfReplicaSpecs"]["Worker"].update(replicas="2"),
            "'2' is not of type 'integer'",
        ),
        (
            lambda d: d["spec"]["runPolicy"].update(cleanPodPolicy="Sometimes"),
            "'Sometimes' is not one of",
        ),
        (
            lambda d: (specs := d["spec"]["tfReplicaSpecs"]).update(Boss=specs["Worker"]),
            "'Boss' is not one of",
        ),
        # a typo the API server would prune
        (lambda d: d["spec"].update(tfReplicaSpec={}), "'tfReplicaSpec' was unexpected"),
        (lambda d: d["metadata"].update(name="Graft_Train"), "'Graft_Train' does not match"),
        (  # caught by the Kubernetes PodTemplate schema, not the CRD's
            lambda d: _container(d).update(resources={"limits": {"cpu": ["8"]}}),
            r"\['8'\] is not valid under any of the given schemas",
        ),
    ],
)
def test_the_tfjob_schemas_catch_mistakes(break_it, error):
    import jsonschema  # kubernetes-validate's ValidationError is a subclass

    doc = _tfjob_doc()
    break_it(doc)
    with pytest.raises(jsonschema.ValidationError, match=error):
        validate_tfjob(doc)


def test_tfjob_yaml_is_what_the_pipeline_compiles(monkeypatch):
    """k8s/training/tfjob.yaml is pipeline.tfjob.render of configs/kubeflow-gpu.yaml: the
    file people read is the manifest the training task creates."""
    from graft.pipeline.tfjob import render

    monkeypatch.chdir(REPO)  # the header names the config as the command does
    text = (K8S / "training" / "tfjob.yaml").read_text()
    assert text == render("configs/kubeflow-gpu.yaml", "train_head", 2), (
        "k8s/training/tfjob.yaml is stale: regenerate it with the command in its header"
    )


@needs_kustomize
def test_gpu_overlay_requests_gpu_and_tolerates_taint_cpu_does_not():
    gpu = _deployment(render(K8S / "overlays/gpu"))["spec"]["template"]["spec"]
    cpu = _deployment(render(K8S / "overlays/cpu"))["spec"]["template"]["spec"]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu[
        "tolerations"
    ]
    assert gpu["nodeSelector"] and gpu["containers"][0]["image"].endswith("-gpu")
    assert "nvidia.com/gpu" not in cpu["containers"][0]["resources"]["limits"]
    assert "tolerations" not in cpu and "nodeSelector" not in cpu
    assert cpu["containers"][0]["image"] == "tensorflow/serving:2.21.0"


@needs_kustomize
def test_probes_ports_and_names_agree_with_configs_and_client():
    p = params()
    cfg = load_config(REPO / "configs" / "kubeflow-gpu.yaml")
    assert p["MODEL_NAME"] == cfg.export.model_name
    assert p["MODEL_BASE_PATH"].endswith("/" + cfg.export.model_name)
    docs = render(K8S / "overlays/cpu")
    c = _deployment(docs)["spec"]["template"]["spec"]["containers"][0]
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == f"/v1/models/{p['MODEL_NAME']}"
    ports = {x["name"]: x["containerPort"] for x in c["ports"]}
    svc = next(d for d in docs if d["kind"] == "Service")
    assert ports == {"grpc": int(p["GRPC_PORT"]), "http": int(p["REST_PORT"])}
    assert {x["port"] for x in svc["spec"]["ports"]} == {int(p["GRPC_PORT"]), int(p["REST_PORT"])}
    from graft.pipeline.cli import build_parser

    serve = build_parser().parse_args(["serve", "--model-base-path", "x", "--model-name", "y"])
    from graft.serving.client import DEFAULT_SERVER

    assert serve.port == int(p["GRPC_PORT"]) and DEFAULT_SERVER.endswith(f":{p['GRPC_PORT']}")
    sec = c["securityContext"]
    assert sec["readOnlyRootFilesystem"] and not sec["allowPrivilegeEscalation"]
    assert "--enable_model_warmup=true" in c["args"]


@needs_kustomize
def test_ports_set_in_params_env_reach_the_pod_the_service_and_the_network_policy(tmp_path):
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    env = copy / "base" / "params.env"
    env.write_text(
        env.read_text()
        .replace("GRPC_PORT=8500", "GRPC_PORT=9000")
        .replace("REST_PORT=8501", "REST_PORT=9001")
    )
    docs = render(copy / "overlays" / "cpu")
    c = _deployment(docs)["spec"]["template"]["spec"]["containers"][0]
    assert {x["name"]: x["containerPort"] for x in c["ports"]} == {"grpc": 9000, "http": 9001}
    svc = next(d for d in docs if d["kind"] == "Service")
    assert {x["name"]: x["port"] for x in svc["spec"]["ports"]} == {"grpc": 9000, "http": 9001}
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy")
    assert [x["port"] for x in policy["spec"]["ingress"][0]["ports"]] == [9000, 9001]
    assert "--port=$(GRPC_PORT)" in c["args"] and "--rest_api_port=$(REST_PORT)" in c["args"]
    for d in docs:
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)


@needs_kustomize
def test_cronjob_forbids_concurrency_with_least_rbac():
    docs = render(K8S / "retraining")
    cron = next(d for d in docs if d["kind"] == "CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    role = next(d for d in docs if d["kind"] == "Role")
    assert all("delete" not in r["verbs"] and "*" not in r["verbs"] for r in role["rules"])
    args = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert (
        args[:2] == ["graft", "submit"]
        and (REPO / args[args.index("--config") + 1].removeprefix("/app/")).exists()
    )


def test_batching_parameters_parse_as_tf_serving_proto():
    from graft.serving.batching import parse_batching_parameters

    m = parse_batching_parameters((K8S / "base" / "batching_parameters.txt").read_text())
    assert m.max_batch_size.value == 32 and m.num_batch_threads.value >= 1
    from google.protobuf.text_format import ParseError

    with pytest.raises(ParseError, match='no field named "max_batch_sz"'):
        parse_batching_parameters("max_batch_sz { value: 3 }")
