"""Thin kfp wrappers: one per step of pipeline.dag, each calling the same component code.

kfp embeds each function's source in the compiled YAML and runs it in the component image,
so the bodies only import Graft and hand over. Input names match dag.STEPS' inputs (a test
checks it); the wiring and order come from dag.STEPS, not from here. Every distributed step's
wrapper takes `tfjob_json`: set (kubeflow.workers > 1), the step runs as that TFJob.
"""

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output


def make_components(image: str) -> dict:
    """The wrappers built for one container image (kubeflow.image)."""

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

    @dsl.component(base_image=image, install_kfp_package=False)
    def ingest(config_json: str, examples: Output[Dataset]):
        from graft.pipeline.kfp_runtime import run

        run("ingest", config_json, {}, examples)

    @dsl.component(base_image=image, install_kfp_package=False)
    def validate(config_json: str, examples: Input[Dataset], validation: Output[Artifact]):
        from graft.pipeline.kfp_runtime import run

        run("validate", config_json, {"examples": examples}, validation)

    @dsl.component(base_image=image, install_kfp_package=False)
    def drift(
        config_json: str,
        examples: Input[Dataset],
        validation: Input[Artifact],
        drift_report: Output[Artifact],
        metrics: Output[Metrics],
    ):
        from graft.pipeline.kfp_runtime import log_json_metrics, run

        run("drift", config_json, {"examples": examples, "validation": validation}, drift_report)
        log_json_metrics(drift_report, "drift.json", metrics)

    @dsl.component(base_image=image, install_kfp_package=False)
    def advise(
        config_json: str,
        examples: Input[Dataset],
        validation: Input[Artifact],
        advice: Output[Artifact],
        metrics: Output[Metrics],
    ):
        from graft.pipeline.kfp_runtime import log_json_metrics, run

        run("advise", config_json, {"examples": examples, "validation": validation}, advice)
        log_json_metrics(advice, "advice.json", metrics)

    @dsl.component(base_image=image, install_kfp_package=False)
    def train_head(
        config_json: str,
        examples: Input[Dataset],
        validation: Input[Artifact],
        advice: Input[Artifact],
        model: Output[Model],
        tfjob_json: str = "",
    ):
        from graft.pipeline.kfp_runtime import run

        run(
            "train_head",
            config_json,
            {"examples": examples, "validation": validation, "advice": advice},
            model,
            tfjob_json,
        )

    @dsl.component(base_image=image, install_kfp_package=False)
    def fine_tune(
        config_json: str,
        examples: Input[Dataset],
        validation: Input[Artifact],
        advice: Input[Artifact],
        head_model: Input[Model],
        model: Output[Model],
        tfjob_json: str = "",
    ):
        from graft.pipeline.kfp_runtime import run

        run(
            "fine_tune",
            config_json,
            {
                "examples": examples,
                "validation": validation,
                "advice": advice,
                "head_model": head_model,
            },
            model,
            tfjob_json,
        )

    @dsl.component(base_image=image, install_kfp_package=False)
    def evaluate(
        config_json: str,
        examples: Input[Dataset],
        validation: Input[Artifact],
        advice: Input[Artifact],
        head_model: Input[Model],
        model: Input[Model],
        drift: Input[Artifact],
        evaluation: Output[Artifact],
        metrics: Output[Metrics],
        confusion: Output[ClassificationMetrics],
        report: Output[HTML],
    ) -> bool:
        from graft.pipeline.kfp_runtime import log_evaluation, run

        run(
            "evaluate",
            config_json,
            {
                "examples": examples,
                "validation": validation,
                "advice": advice,
                "head_model": head_model,
                "model": model,
                "drift": drift,
            },
            evaluation,
        )
        return log_evaluation(evaluation, metrics, confusion, report)

    @dsl.component(base_image=image, install_kfp_package=False)
    def export(
        config_json: str,
        model: Input[Model],
        examples: Input[Dataset],
        evaluation: Input[Artifact],
        advice: Input[Artifact],
        exported: Output[Model],
        edge_models: Output[Model],
    ):
        from graft.pipeline.kfp_runtime import log_edge_models, run

        run(
            "export",
            config_json,
            {"model": model, "examples": examples, "evaluation": evaluation, "advice": advice},
            exported,
        )
        log_edge_models(exported, edge_models)

    @dsl.component(base_image=image, install_kfp_package=False)
    def push(
        config_json: str,
        exported: Input[Model],
        evaluation: Input[Artifact],
        drift: Input[Artifact],
        pushed: Output[Artifact],
    ):
        from graft.pipeline.kfp_runtime import run

        inputs = {"exported": exported, "evaluation": evaluation, "drift": drift}
        run("push", config_json, inputs, pushed)

    return {
        "resolve_config": resolve_config,
        "ingest": ingest,
        "validate": validate,
        "drift": drift,
        "advise": advise,
        "train_head": train_head,
        "fine_tune": fine_tune,
        "evaluate": evaluate,
        "export": export,
        "push": push,
    }


OUTPUT_NAMES = {
    "ingest": "examples",
    "validate": "validation",
    "drift": "drift_report",
    "advise": "advice",
    "train_head": "model",
    "fine_tune": "model",
    "evaluate": "evaluation",
    "export": "exported",
    "push": "pushed",
}
