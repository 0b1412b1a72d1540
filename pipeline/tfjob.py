"""Training steps on several machines: a TFJob of the Kubeflow Training Operator per step.

With kubeflow.workers > 1, kubeflow.py compiles `manifest(cfg, step)` into each GPU-capable
step's kfp task. At run time that task (kfp_runtime.run) fills in the run's artifact URIs,
creates the TFJob through the Kubernetes API and waits for it (`launch`). The operator
starts `workers` pods of the Graft image and sets TF_CONFIG in each; every pod runs
`worker_main`, i.e. the same dag.run_step as a single pod, and the training code picks
MultiWorkerMirroredStrategy from TF_CONFIG. Worker 0 is the chief (no Chief replica): it
alone uploads the step's output, which the kfp task then copies into its output artifact.

Pods share no disk, so inputs and the output travel by URI through tf.io.gfile: the
pipeline root must be on a filesystem TensorFlow reads (gs://). Each try is a fresh TFJob
(restartPolicy Never); a failed one fails the kfp task, whose retries start it again.
k8s/training/tfjob.yaml is `render` of configs/kubeflow-gpu.yaml (a test keeps them equal).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import time
from collections.abc import Callable
from typing import Any

import yaml

from graft.core.config import GraftConfig, load_config
from graft.core.log import log
from graft.pipeline import dag

__all__ = ["job_name", "launch", "manifest", "render", "run_tfjob", "state"]


GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "tfjobs"
CONTAINER = "tensorflow"  # the operator sets TF_CONFIG in the container of this name only
PORT_NAME, PORT = "tfjob-port", 2222  # the operator's defaults, stated so they are visible
WORK = "/tmp/graft-tfjob"  # an emptyDir: staged inputs and the step's local output
COMMAND = ["python3", "-m", "graft.pipeline.tfjob"]
CONFIG_ENV = "GRAFT_CONFIG_JSON"
TERMINAL = ("Succeeded", "Failed")


def gpus_per_worker(cfg: GraftConfig, step: dag.Step) -> int:
    """GPUs in each worker pod: only for a step that asks for them, as for a single pod."""
    kf = cfg.kubeflow
    if not (step.gpu_capable and dag.resources(cfg, step).gpu):
        return 0
    return kf.gpu.count if kf.gpus_per_worker is None else kf.gpus_per_worker


def manifest(cfg: GraftConfig, step: dag.Step) -> dict[str, Any]:
    """The TFJob for one step, everything but this run's URIs, name and namespace.

    Args:
        cfg: the config (kubeflow.image, the step's resources, the workers).
        step: the step to run as a TFJob.

    Returns:
        The TFJob manifest, as a dict.
    """
    kf = cfg.kubeflow
    res = dag.resources(cfg, step)
    gpus = gpus_per_worker(cfg, step)
    requests = {k: v for k, v in (("cpu", res.cpu_request), ("memory", res.memory_request)) if v}
    limits: dict[str, Any] = {
        k: v for k, v in (("cpu", res.cpu_limit), ("memory", res.memory_limit)) if v
    }
    if gpus:
        limits["nvidia.com/gpu"] = gpus
    labels = {"app.kubernetes.io/name": "graft", "graft/step": step.name}
    container = {
        "name": CONTAINER,
        "image": kf.image,
        "command": COMMAND,
        "args": ["--step", step.name],
        "env": [{"name": "TF_CPP_MIN_LOG_LEVEL", "value": "2"}],
        "ports": [{"name": PORT_NAME, "containerPort": PORT}],
        "resources": {"requests": requests, "limits": limits},
        "volumeMounts": [{"name": "work", "mountPath": WORK}],
    }
    pod: dict[str, Any] = {"containers": [container], "volumes": [{"name": "work", "emptyDir": {}}]}
    if gpus:
        pod["nodeSelector"] = dict(kf.gpu.node_selector)
        pod["tolerations"] = [
            {"key": kf.gpu.toleration_key, "operator": "Exists", "effect": "NoSchedule"}
        ]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TFJob",
        "metadata": {"name": job_name(step.name, ""), "labels": labels},
        "spec": {
            "runPolicy": {
                "cleanPodPolicy": "Running",
                "backoffLimit": 0,
                "ttlSecondsAfterFinished": 24 * 3600,
                "activeDeadlineSeconds": kf.tfjob_timeout_s,
            },
            "tfReplicaSpecs": {
                "Worker": {
                    "replicas": kf.workers,
                    "restartPolicy": "Never",
                    "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
                }
            },
        },
    }


def render(config_path: str, step_name: str, workers: int = 2) -> str:
    """The manifest as YAML, for k8s/training/tfjob.yaml.

    Args:
        config_path: the config file.
        step_name: the step to run as a TFJob.
        workers: the number of workers.

    Returns:
        The YAML text, with a header saying how it was made.
    """
    cfg = load_config(config_path, [f"kubeflow.workers={workers}"])
    head = (
        f"# The TFJob that `graft compile` puts into the {step_name} task for {config_path}\n"
        f"# with kubeflow.workers={workers} (pipeline/tfjob.py: manifest). At run time the task\n"
        "# adds a unique name, its namespace, GRAFT_CONFIG_JSON and --inputs/--output URIs.\n"
        '# Regenerate: python -c "from graft.pipeline.tfjob import render; print(render(\n'
        f"#   '{config_path}', '{step_name}', {workers}), end='')\" > k8s/training/tfjob.yaml\n"
    )
    return head + yaml.safe_dump(manifest(cfg, dag.step(step_name)), sort_keys=False)


def job_name(step_name: str, key: str) -> str:
    """A DNS-1035 name, the same for the same output (a relaunched task finds its TFJob).

    Args:
        step_name: the step.
        key: what names the output (its URI); empty for a name without a hash.

    Returns:
        The TFJob's name.
    """
    base = "graft-" + step_name.replace("_", "-").lower()
    return f"{base}-{hashlib.sha256(key.encode()).hexdigest()[:10]}" if key else base


def bind(
    spec: dict, *, name: str, namespace: str, config_json: str, inputs: dict, output: str
) -> dict:
    """The compiled manifest with this run's name, config and artifact URIs filled in."""
    body = copy.deepcopy(spec)
    body["metadata"].update(name=name, namespace=namespace)
    for replica in body["spec"]["tfReplicaSpecs"].values():
        for c in replica["template"]["spec"]["containers"]:
            if c["name"] == CONTAINER:
                c["args"] = [*c["args"], "--inputs", json.dumps(inputs), "--output", output]
                c["env"] = [*c.get("env", []), {"name": CONFIG_ENV, "value": config_json}]
    return body


def state(obj: dict) -> str | None:
    """Succeeded or Failed once the operator says so (its latest true condition), else None.

    Args:
        obj: a TFJob object as the Kubernetes API returns it.

    Returns:
        "Succeeded", "Failed", or None while it runs.
    """
    true = [c for c in (obj.get("status") or {}).get("conditions") or [] if c["status"] == "True"]
    last = true[-1]["type"] if true else None
    return last if last in TERMINAL else None


def _message(obj: dict) -> str:
    conds = (obj.get("status") or {}).get("conditions") or []
    return "; ".join(f"{c['type']}: {c.get('message', '')}" for c in conds[-2:])


def run_tfjob(
    body: dict,
    timeout_s: float,
    poll_s: float = 15.0,
    api=None,
    output_there: Callable[[], bool] = lambda: True,
) -> dict:
    """Create the TFJob (or find this task's from an earlier try) and wait until it ends.

    A finished failed one of the same name is an earlier try: it is deleted and made again.
    So is a succeeded one whose output is gone (`output_there` False): an earlier try copied
    it and removed the staging copy, then failed before kfp uploaded it; rejoining that job
    gave every retry an empty output.

    Args:
        body: the TFJob manifest.
        timeout_s: how long to wait.
        poll_s: seconds between polls.
        api: the Kubernetes CustomObjectsApi (default: this pod's service account).
        output_there: whether the job's staged output exists, asked once the earlier job's
            state is read (a job still running then may have finished since the task began).

    Returns:
        The finished TFJob object.

    Raises:
        RuntimeError: it failed.
        TimeoutError: it outlived timeout_s (the TFJob is then deleted).
    """
    from kubernetes.client.exceptions import ApiException

    api = api or _custom_objects_api()
    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    args = (GROUP, VERSION, ns, PLURAL)
    try:
        api.create_namespaced_custom_object(*args, body)
        log(f"tfjob: created {ns}/{name}")
    except ApiException as e:
        if e.status != 409:
            raise
        before = state(api.get_namespaced_custom_object(*args, name))
        if before == "Failed" or (before == "Succeeded" and not output_there()):
            why = "failed before" if before == "Failed" else "succeeded before, its output gone"
            log(f"tfjob: {name} {why}: deleting it and starting again", level="warn")
            api.delete_namespaced_custom_object(*args, name)
            _wait_gone(api, args, name, timeout_s, poll_s)
            api.create_namespaced_custom_object(*args, body)
        else:
            log(f"tfjob: {ns}/{name} exists: waiting for it")
    t0 = time.monotonic()
    while True:
        obj = api.get_namespaced_custom_object(*args, name)
        st = state(obj)
        if st == "Succeeded":
            log(f"tfjob: {name} succeeded", level="ok")
            return obj
        if st == "Failed":
            raise RuntimeError(f"TFJob {ns}/{name} failed: {_message(obj)}")
        if time.monotonic() - t0 > timeout_s:
            api.delete_namespaced_custom_object(*args, name)
            raise TimeoutError(f"TFJob {ns}/{name} still running after {timeout_s:.0f}s: deleted")
        time.sleep(poll_s)


def _wait_gone(api, args, name, timeout_s, poll_s) -> None:
    from kubernetes.client.exceptions import ApiException

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        try:
            api.get_namespaced_custom_object(*args, name)
        except ApiException as e:
            if e.status == 404:
                return
            raise
        time.sleep(poll_s)
    raise TimeoutError(f"TFJob {name} was not deleted within {timeout_s:.0f}s")


def _custom_objects_api():
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CustomObjectsApi()


def namespace() -> str:
    """The namespace of the pod this runs in (where the kfp task creates its TFJob)."""
    path = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
    if os.path.exists(path):
        with open(path) as f:
            return f.read().strip()
    return os.environ.get("POD_NAMESPACE", "kubeflow")


def copy_tree(src: str, dst: str) -> None:
    """Recursive copy through tf.io.gfile, so either side may be local or gs://."""
    import tensorflow as tf

    src = src.rstrip("/")
    for root, _, files in tf.io.gfile.walk(src):
        rel = root[len(src) :].lstrip("/")
        target = f"{dst.rstrip('/')}/{rel}" if rel else dst
        tf.io.gfile.makedirs(target)
        for name in files:
            tf.io.gfile.copy(f"{root}/{name}", f"{target}/{name}", overwrite=True)


def launch(
    step: str, config_json: str, spec: dict, inputs: dict, output, api=None, poll_s: float = 15.0
) -> dict:
    """In the kfp task: run the step as the TFJob `spec` and fill `output` with its result.

    The chief uploads to a staging URI beside the output artifact; the task copies it into
    output.path, which kfp then uploads as for any step.

    Args:
        step: the step's name.
        config_json: the resolved config, as JSON.
        spec: the TFJob manifest (manifest()'s).
        inputs: input name -> artifact URI.
        output: the kfp output artifact.
        api: the Kubernetes CustomObjectsApi (default: this pod's service account).
        poll_s: seconds between polls.

    Returns:
        The step's summary.
    """
    import tensorflow as tf

    cfg = GraftConfig.model_validate_json(config_json)
    staging = output.uri.rstrip("/") + "-tfjob"
    ns = namespace()
    body = bind(
        spec,
        name=job_name(step, output.uri),
        namespace=ns,
        config_json=config_json,
        inputs=inputs,
        output=staging,
    )
    result = f"{staging}/{dag.RESULT_FILE}"
    run_tfjob(
        body,
        cfg.kubeflow.tfjob_timeout_s,
        poll_s,
        api,
        output_there=lambda: tf.io.gfile.exists(result),
    )
    copy_tree(staging, output.path)
    tf.io.gfile.remove(result)  # first: a kill mid-delete leaves no output that looks whole
    tf.io.gfile.rmtree(staging)
    with open(os.path.join(output.path, dag.RESULT_FILE)) as f:
        return json.load(f)


def _task() -> tuple[str | None, int | None, dict]:
    tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = tf_config.get("task") or {}
    return task.get("type"), task.get("index"), tf_config.get("cluster") or {}


def worker_main(argv: list[str] | None = None) -> int:
    """What each TFJob pod runs: stage the inputs, run the step, the chief uploads the output."""
    p = argparse.ArgumentParser(prog="python -m graft.pipeline.tfjob")
    p.add_argument("--step", required=True, choices=dag.STEP_NAMES)
    p.add_argument("--inputs", required=True, help="JSON: input name -> URI")
    p.add_argument("--output", required=True, help="URI the chief uploads the step's output to")
    p.add_argument("--work", default=os.environ.get("GRAFT_TFJOB_WORK", WORK))
    a = p.parse_args(argv)
    from graft.components.model import chief_task

    task_type, task_id, cluster = _task()
    chief = chief_task(task_type, task_id, cluster)
    cfg = GraftConfig.model_validate_json(os.environ[CONFIG_ENV])
    work = os.path.join(a.work, f"{task_type or 'local'}-{task_id or 0}")
    inputs = {}
    for name, uri in json.loads(a.inputs).items():
        if "://" in uri:
            inputs[name] = os.path.join(work, "in", name)
            copy_tree(uri, inputs[name])
        else:
            inputs[name] = uri
    out = os.path.join(work, "out")
    log(f"tfjob: {a.step} as {task_type}:{task_id} ({'chief' if chief else 'worker'})")
    dag.run_step(a.step, cfg, inputs, out)
    if chief:
        copy_tree(out, a.output)
        log(f"tfjob: {a.step} output uploaded to {a.output}", level="ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(worker_main())
