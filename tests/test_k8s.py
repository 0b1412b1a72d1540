"""k8s manifests: rendered with kustomize, validated offline against Kubernetes JSON schemas."""

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
@pytest.mark.parametrize("overlay", ["overlays/cpu", "overlays/gpu", "retraining"])
def test_every_rendered_manifest_validates(overlay):
    docs = render(K8S / overlay)
    assert docs
    for d in docs:
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)


def test_base_files_validate_without_kustomize():
    for f in sorted((K8S / "base").glob("*.yaml")) + sorted((K8S / "retraining").glob("*.yaml")):
        for d in yaml.safe_load_all(f.read_text()):
            if d and d.get("kind") != "Kustomization":
                kubernetes_validate.validate(d, K8S_VERSION, strict=True)


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
    with pytest.raises(Exception, match="no field named"):
        parse_batching_parameters("max_batch_sz { value: 3 }")
