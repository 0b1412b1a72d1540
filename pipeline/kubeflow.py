"""Kubeflow Pipelines builder: pipeline.dag.STEPS -> a kfp v2 pipeline, compile, submit.

The step order and wiring come from dag.STEPS (the same object the local runner walks);
pipeline.kfp_components generates each step's component from its Step. Training steps get GPUs,
node selector and toleration from `kubeflow:`; a step with `when` runs under dsl.If on its
upstream's output. With kubeflow.workers > 1 each distributed step's task gets its TFJob
(pipeline.tfjob) compiled in, and is itself a small pod that launches it and waits.
"""

import json
import os

from kfp import compiler, dsl, kubernetes

from graft.core.config import GraftConfig
from graft.core.log import log
from graft.pipeline import dag, tfjob
from graft.pipeline.kfp_components import FRESHNESS, GATE_OUTPUT, make_components
from graft.pipeline.kfp_runtime import PARAMETERS

__all__ = [
    "PARAMETERS",
    "build_pipeline",
    "compile_pipeline",
    "parameter_defaults",
    "submit",
]


# the task that creates a TFJob and waits for it: no GPU, little CPU
LAUNCHER = {
    "cpu_request": "250m",
    "cpu_limit": "1",
    "memory_request": "512Mi",
    "memory_limit": "2Gi",
}


def launches_tfjob(step: dag.Step, cfg: GraftConfig) -> bool:
    return step.distributed and cfg.kubeflow.workers > 1


def _configure(task, step: dag.Step, cfg: GraftConfig) -> None:
    kf = cfg.kubeflow
    res = dag.resources(cfg, step)
    task.set_display_name(step.name)
    launcher = launches_tfjob(step, cfg)  # the step's resources go to the TFJob's workers
    pod = res.model_copy(update=LAUNCHER) if launcher else res
    if pod.cpu_request:
        task.set_cpu_request(pod.cpu_request)
    if pod.cpu_limit:
        task.set_cpu_limit(pod.cpu_limit)
    if pod.memory_request:
        task.set_memory_request(pod.memory_request)
    if pod.memory_limit:
        task.set_memory_limit(pod.memory_limit)
    if res.gpu and step.gpu_capable and kf.gpu.count > 0 and not launcher:
        task.set_accelerator_type(kf.gpu.type)
        task.set_accelerator_limit(kf.gpu.count)
        for key, value in kf.gpu.node_selector.items():
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        kubernetes.add_toleration(
            task, key=kf.gpu.toleration_key, operator="Exists", effect="NoSchedule"
        )
    if res.retries:
        task.set_retry(num_retries=res.retries, backoff_duration="30s", backoff_factor=2.0)
    task.set_caching_options(enable_caching=res.caching and step.cacheable)


def parameter_defaults(cfg: GraftConfig) -> dict:
    """The run parameters' defaults: the compiled config's values ("" where it has none).

    Args:
        cfg: the config compiled in.

    Returns:
        Parameter name -> default.
    """
    values = dag.section_values(cfg, tuple(PARAMETERS.values()))
    return {
        name: values[key] if values[key] is not None else "" for name, key in PARAMETERS.items()
    }


def build_pipeline(cfg: GraftConfig):
    """A @dsl.pipeline: the compiled config plus typed parameters that override it per run.

    Args:
        cfg: the config compiled in.

    Returns:
        The pipeline function.
    """
    root = cfg.kubeflow.pipeline_root or ""
    if cfg.kubeflow.workers > 1 and not root.startswith("gs://"):
        raise ValueError(
            f"kubeflow.workers={cfg.kubeflow.workers} needs kubeflow.pipeline_root on gs:// "
            f"(got {root or 'none: the cluster default, MinIO'}): the TFJob's pods share no "
            "disk and read their inputs and write their output by URI with tf.io.gfile"
        )
    dag.check_resources(cfg)
    comps = make_components(cfg.kubeflow.image)
    default_json = json.dumps(cfg.to_dict(), sort_keys=True)
    defaults = parameter_defaults(cfg)

    @dsl.pipeline(
        name=cfg.kubeflow.pipeline_name,
        description="Graft: " + " -> ".join(dag.STEP_NAMES),
        pipeline_root=cfg.kubeflow.pipeline_root,
    )
    def graft_pipeline(
        config_json: str = default_json,
        data_path: str = defaults["data_path"],
        push_destination: str = defaults["push_destination"],
        recipe: str = defaults["recipe"],
        budget_minutes: float = defaults["budget_minutes"],
        train_head_epochs: int = defaults["train_head_epochs"],
        train_head_learning_rate: float = defaults["train_head_learning_rate"],
        fine_tune_enabled: bool = defaults["fine_tune_enabled"],
        fine_tune_epochs: int = defaults["fine_tune_epochs"],
        fine_tune_learning_rate: float = defaults["fine_tune_learning_rate"],
    ):
        resolved = comps["resolve_config"](
            config_json=config_json,
            data_path=data_path,
            push_destination=push_destination,
            recipe=recipe,
            budget_minutes=budget_minutes,
            train_head_epochs=train_head_epochs,
            train_head_learning_rate=train_head_learning_rate,
            fine_tune_enabled=fine_tune_enabled,
            fine_tune_epochs=fine_tune_epochs,
            fine_tune_learning_rate=fine_tune_learning_rate,
        )
        resolved.set_display_name("config")
        resolved.set_caching_options(enable_caching=True)
        resolved.set_cpu_request("0.5").set_memory_request("512Mi").set_memory_limit("1Gi")
        resolved.set_retry(num_retries=2, backoff_duration="30s", backoff_factor=2.0)
        config_json = resolved.output
        tasks: dict = {}
        for when, steps in _gated_groups(cfg):
            if when is None:
                _add_tasks(steps, tasks, comps, cfg, config_json)
                continue
            # the upstream component returns when.output as its one output parameter; steps
            # that share a gate share one dsl.If, so a gated step may read another's output
            gate = tasks[when.step].outputs[GATE_OUTPUT] == True  # noqa: E712
            with dsl.If(gate, name=when.output):
                _add_tasks(steps, tasks, comps, cfg, config_json)

    return graft_pipeline


def _gated_groups(cfg: GraftConfig) -> list[tuple[dag.When | None, list[dag.Step]]]:
    """Consecutive steps grouped by the gate they run under (None: no gate, or forced)."""
    groups: list[tuple[dag.When | None, list[dag.Step]]] = []
    for step in dag.STEPS:
        when = step.when if step.when and not dag.forced(step, cfg) else None
        if groups and groups[-1][0] == when and when is not None:
            groups[-1][1].append(step)
        else:
            groups.append((when, [step]))
    return groups


def _add_tasks(steps: list[dag.Step], tasks: dict, comps: dict, cfg: GraftConfig, config_json):
    for step in steps:
        kwargs = {
            name: tasks[src].outputs[dag.output_name(dag.step(src))]
            for name, src in {**step.shows, **step.inputs}.items()
        }
        if step.external_key:  # never cached: the step is cached only while this key holds
            key = comps[f"{step.name}_{FRESHNESS}"](config_json=config_json, **kwargs)
            key.set_display_name(f"{step.name} freshness")
            key.set_caching_options(enable_caching=False)
            key.set_cpu_request("0.5").set_memory_request("512Mi").set_memory_limit("1Gi")
            key.set_retry(num_retries=2, backoff_duration="30s", backoff_factor=2.0)
            kwargs[FRESHNESS] = key.output
        if launches_tfjob(step, cfg):
            kwargs["tfjob_json"] = json.dumps(tfjob.manifest(cfg, step), sort_keys=True)
        tasks[step.name] = comps[step.name](config_json=config_json, **kwargs)
        _configure(tasks[step.name], step, cfg)


def compile_pipeline(cfg: GraftConfig, output: str) -> str:
    """Compile the pipeline to a KFP package (pipeline.yaml) for upload.

    Args:
        cfg: the config compiled in.
        output: the package path; its folder is created.

    Returns:
        `output`.
    """
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    compiler.Compiler().compile(build_pipeline(cfg), package_path=output)
    return output


def submit(
    cfg: GraftConfig,
    *,
    host: str | None,
    experiment: str | None,
    run_name: str | None,
    schedule,
    max_concurrency: int = 1,
    dry_run: bool = False,
) -> dict:
    """Create a run, or a recurring run when `schedule` (5-field cron) is given.

    The pipeline is compiled into a temporary folder that is removed again, dry run or not.

    Args:
        cfg: the config compiled in.
        host: the KFP API URL (kubeflow.host when None).
        experiment: the experiment (kubeflow.experiment when None).
        run_name: the run's name (kubeflow.run_name, else pipeline name and time).
        schedule: a cron expression for a recurring run; None for one run.
        max_concurrency: runs of a recurring run at once.
        dry_run: say what would be created, create nothing.

    Returns:
        What was (or would be) created: host, experiment, run name, kind, and its id.
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="graft-kfp-") as tmp:
        package = os.path.join(tmp, "pipeline.yaml")
        compile_pipeline(cfg, package)
        return _submit_package(
            cfg,
            package,
            host=host,
            experiment=experiment,
            run_name=run_name,
            schedule=schedule,
            max_concurrency=max_concurrency,
            dry_run=dry_run,
        )


def _submit_package(
    cfg: GraftConfig,
    package: str,
    *,
    host: str | None,
    experiment: str | None,
    run_name: str | None,
    schedule,
    max_concurrency: int,
    dry_run: bool,
) -> dict:
    import time

    host = host or cfg.kubeflow.host
    experiment = experiment or cfg.kubeflow.experiment
    cron = None
    if schedule:
        fields = schedule.split()
        if len(fields) not in (5, 6):
            raise ValueError(f"--schedule must be a cron expression of 5 fields, got '{schedule}'")
        cron = schedule if len(fields) == 6 else "0 " + schedule  # KFP takes a seconds field first
    plan = {
        "host": host,
        "experiment": experiment,
        "pipeline_compiled": True,  # into a temporary file, removed after submitting
        "run_name": run_name
        or cfg.kubeflow.run_name
        or f"{cfg.kubeflow.pipeline_name}-{time.strftime('%Y%m%d-%H%M%S')}",
        "kind": "recurring_run" if cron else "run",
    }
    if cron:
        plan.update(cron_expression=cron, max_concurrency=max_concurrency)
    if dry_run:
        plan["dry_run"] = True
        return plan
    if not host:
        raise ValueError("no KFP host: pass --host URL or set kubeflow.host")
    import kfp

    try:
        client = kfp.Client(host=host)
        exp = client.create_experiment(experiment)
    except Exception as e:  # noqa: BLE001 - connection errors come in many types
        raise ConnectionError(
            f"cannot reach the KFP API at {host}: {type(e).__name__}: {str(e)[:300]}"
        ) from None
    if cron:
        r = client.create_recurring_run(
            exp.experiment_id,
            job_name=plan["run_name"],
            cron_expression=cron,
            max_concurrency=max_concurrency,
            pipeline_package_path=package,
            enable_caching=False,
        )
        plan["recurring_run_id"] = r.recurring_run_id
    else:
        r = client.create_run_from_pipeline_package(
            package, arguments={}, run_name=plan["run_name"], experiment_name=experiment
        )
        plan["run_id"] = r.run_id
    log(f"submit: {plan['kind']} created on {host}")
    return plan
