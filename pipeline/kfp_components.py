"""kfp components generated from pipeline.dag.STEPS: one container entrypoint for every step.

Each step's component runs `graft step NAME --executor-input {{$}}` in the project image. Its
interface comes from the Step: a `config_json` parameter, one input artifact per input and
shown output (typed as its source step's output directory), the outputs of `Step.artifact`,
`tfjob_json` for a distributed step, `freshness` for a step with an external key, and as its
one output parameter (`Output`) the bool that other steps' `when` reads. The same
signature, as a Python function, is what `graft step` hands to kfp's own executor, so the
component and the entrypoint cannot disagree. Only `resolve_config`, the run parameters' task
before the steps, is a plain kfp Python component.

A step whose output depends on more than its config and inputs (dag.Step.external_key:
ingest reads the data folder, drift and evaluate the served version) gets a task before it,
`graft step NAME --freshness`, never cached, that computes that key as the local runner does;
the step takes it as its `freshness` parameter. kfp's cache key covers a task's parameters,
so the step (and what follows) is taken from the cache only while the data and the served
version are the ones it saw.
"""

import inspect
from collections.abc import Callable

from kfp import dsl

from graft.pipeline import dag

__all__ = [
    "ENTRYPOINT",
    "FRESHNESS",
    "GATE_OUTPUT",
    "key_function",
    "make_components",
    "step_function",
]


ENTRYPOINT = ["graft", "step"]  # + the step's name: pipeline/cli.py's `graft step`
EXECUTOR_INPUT = "{{$}}"  # kfp's placeholder for the whole executor input (JSON)
# kfp's name for a component's return value: the bool a `when` reads (kfp.local's dsl.If
# resolves a task's output by no other name)
GATE_OUTPUT = "Output"
FRESHNESS = "freshness"  # the parameter (and `graft step` flag) of a step's external key


def _input_params(step: dag.Step) -> list[inspect.Parameter]:
    """`config_json` and one input artifact per input and shown output, typed as the upstream
    step declares it: what a step's component and its key task both take."""
    kw = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter("config_json", kw, annotation=str)]
    for name, src in {**step.shows, **step.inputs}.items():
        upstream = dag.step(src)
        kind = _artifact_class(upstream.artifact[dag.output_name(upstream)].type)
        params.append(inspect.Parameter(name, kw, annotation=dsl.Input[kind]))
    return params


def step_function(step: dag.Step) -> Callable:
    """The step as a Python function with the kfp-typed signature of its component.

    Args:
        step: a step of dag.STEPS.

    Returns:
        A function kfp can make a container component of.
    """
    kw = inspect.Parameter.KEYWORD_ONLY
    params = _input_params(step)
    for name, out in step.artifact.items():
        params.append(inspect.Parameter(name, kw, annotation=dsl.Output[_artifact_class(out.type)]))
    if step.distributed:
        params.append(inspect.Parameter("tfjob_json", kw, annotation=str, default=""))
    if step.external_key:  # read by nothing: it is there for kfp's cache key
        params.append(inspect.Parameter(FRESHNESS, kw, annotation=str, default=""))
    gates = dag.gate_outputs(step)
    if len(gates) > 1:  # kfp.local resolves a dsl.If only on a task's one output, `Output`
        raise ValueError(f"step {step.name}: `when` reads {gates}; a step can gate on one bool")
    returns = bool if gates else None

    def run(**kwargs):
        from graft.pipeline.kfp_runtime import run_component

        return run_component(step, kwargs)

    run.__name__ = run.__qualname__ = step.name
    run.__doc__ = step.doc
    run.__signature__ = inspect.Signature(
        params, return_annotation=returns or inspect.Signature.empty
    )
    run.__annotations__ = {p.name: p.annotation for p in params}
    if returns:
        run.__annotations__["return"] = returns
    return run


def key_function(step: dag.Step) -> Callable:
    """The task before a step with an external key: the step's inputs in, the key out.

    Args:
        step: a step of dag.STEPS with an external_key.

    Returns:
        A function kfp can make a container component of, returning the key (str).
    """
    params = _input_params(step)

    def run(**kwargs) -> str:
        from graft.pipeline.kfp_runtime import run_key

        return run_key(step, kwargs)

    run.__name__ = run.__qualname__ = f"{step.name}_{FRESHNESS}"
    run.__doc__ = f"{step.name}'s external key (what else its output depends on), never cached"
    run.__signature__ = inspect.Signature(params, return_annotation=str)
    run.__annotations__ = {p.name: p.annotation for p in params} | {"return": str}
    return run


def _artifact_class(name: str) -> type:
    return getattr(dsl, name)  # Dataset, Artifact, Model, Metrics, ClassificationMetrics, HTML


def step_component(step: dag.Step, image: str, freshness: bool = False):
    """The step's kfp component (or, with `freshness`, its key task's): its interface from the
    DAG, `graft step NAME [--freshness]` as its command.

    (kfp's compile-time modules are imported here: `graft step` runs with kfp's runtime-only
    imports, see cli.cmd_step.)"""
    from kfp.dsl import component_factory, python_component, structures

    func = key_function(step) if freshness else step_function(step)
    spec = component_factory.extract_component_interface(func)
    spec.implementation = structures.Implementation(
        container=structures.ContainerSpecImplementation(
            image=image,
            command=[*ENTRYPOINT, step.name, *([f"--{FRESHNESS}"] if freshness else [])],
            args=["--executor-input", EXECUTOR_INPUT],
        )
    )
    return python_component.PythonComponent(component_spec=spec, python_func=func)


def make_components(image: str) -> dict:
    """resolve_config, every step's component and each external key's task, for one container
    image (kubeflow.image).

    Args:
        image: the container image the components run in.

    Returns:
        Component name -> kfp component.
    """

    @dsl.component(base_image=image, install_kfp_package=False)
    def resolve_config(
        config_json: str,
        data_path: str,
        push_destination: str,
        recipe: str,
        budget_minutes: float,
        train_head_epochs: int,
        train_head_learning_rate: float,
        fine_tune_enabled: bool,
        fine_tune_epochs: int,
        fine_tune_learning_rate: float,
    ) -> str:
        params = dict(locals())  # first: only the parameters
        from graft.pipeline.kfp_runtime import resolve_config as resolve

        return resolve(params.pop("config_json"), params)

    return (
        {"resolve_config": resolve_config}
        | {s.name: step_component(s, image) for s in dag.STEPS}
        | {
            f"{s.name}_{FRESHNESS}": step_component(s, image, freshness=True)
            for s in dag.STEPS
            if s.external_key
        }
    )
