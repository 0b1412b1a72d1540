"""The prepared GPU check: fine-tune throughput by precision and XLA, and the input pipeline there.

For a machine with a GPU, TensorFlow's GPU build and Graft's dependencies (the Graft image on
a GPU node has all three); `benchmarks/gpu_check.sh` runs it. It times Graft's own fine-tune
step (components.model: preprocess layer, MobileNetV2 at 224 px, every layer trainable, BN
frozen) on real decoded demo images held in memory, in float32, mixed_float16 and
mixed_float16 + XLA. Then the fastest of the three is fed by components/data.py from the
ingest TFRecords and from memory: the input_pipeline benchmark's ratio, on that machine.

GPU_CHECK_SMOKE=1 runs the same code tiny on the CPU (the suite does, so the script is known
to run before a lent GPU's minutes are spent on it); its result is named gpu_check_smoke.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import RESULTS, demo_examples, in_memory_batches, report


@dataclass(frozen=True)
class Settings:
    backbone: str
    size: int
    alpha: float
    batch: int
    warmup: int
    steps: int
    classes: int
    per_class: int


FULL = Settings(
    backbone="mobilenet_v2",
    size=224,
    alpha=1.0,
    batch=64,
    warmup=10,
    steps=60,
    classes=3,
    per_class=300,
)
# the smoke run proves the script, not the figures: MobileNet v1 (28 layers against 155) traces
# and compiles several times faster on the CPU, and the code path is the same
SMOKE = Settings(
    backbone="mobilenet", size=32, alpha=0.25, batch=8, warmup=2, steps=3, classes=2, per_class=16
)
VARIANTS = (
    ("float32", "float32", False),
    ("mixed_float16", "mixed_float16", False),
    ("mixed_float16_xla", "mixed_float16", True),
)


def _fine_tune_model(policy: str, jit: bool, s: Settings):
    import keras

    from graft.components import model as gmodel
    from graft.core.config import BaseConfig, HeadConfig, UnfreezeConfig

    keras.mixed_precision.set_global_policy(policy)
    model = gmodel.build_model(
        BaseConfig(name=s.backbone, weights=None, kwargs={"alpha": s.alpha}),
        HeadConfig(),
        s.classes,
        s.size,
    )
    gmodel.unfreeze(model, UnfreezeConfig(mode="all"))
    # under mixed_float16 Keras wraps the optimizer in a LossScaleOptimizer, as in fine_tune
    model.compile(
        keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy", jit_compile=jit
    )
    return model


def _images_per_s(model, ds, s: Settings) -> float:
    """One fit of warmup + steps batches, timed between the last warm-up batch and the end.

    Reading the loss at both ends waits for the device, so queued GPU work is counted.
    """
    import keras

    marks: dict[int, float] = {}

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch in (s.warmup - 1, s.warmup + s.steps - 1):
                float(logs["loss"])
                marks[batch] = time.perf_counter()

    model.fit(ds, steps_per_epoch=s.warmup + s.steps, epochs=1, verbose=0, callbacks=[Clock()])
    return s.steps * s.batch / (marks[s.warmup + s.steps - 1] - marks[s.warmup - 1])


def main(smoke: bool = False, out: Path | None = None) -> dict:
    import tensorflow as tf

    from graft.components import data as gdata

    s = SMOKE if smoke else FULL
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus and not smoke:
        raise SystemExit(
            "gpu_check: TensorFlow sees no GPU here (tf.config.list_physical_devices('GPU') "
            "is empty), and the full check on a CPU would take hours. GPU_CHECK_SMOKE=1 runs "
            "the tiny CPU version."
        )
    devices = [
        tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus
    ]
    print(
        f"gpu_check: {'smoke run on the CPU' if smoke else ', '.join(devices)}; generating "
        f"{s.classes * s.per_class} demo images at {s.size} px",
        flush=True,
    )
    ex = demo_examples(
        Path(tempfile.mkdtemp()), classes=s.classes, per_class=s.per_class, size=s.size
    )
    memory = in_memory_batches(ex, s.size, s.batch)
    rates, models = {}, {}
    for name, policy, jit in VARIANTS:
        t0 = time.time()
        models[name] = _fine_tune_model(policy, jit, s)
        rates[name] = _images_per_s(models[name], memory, s)
        print(
            f"gpu_check: {name}: {rates[name]:.1f} images/s ({time.time() - t0:.0f}s with "
            "build and "
            "compile)",
            flush=True,
        )
    best = max(rates, key=rates.get)
    pipeline = gdata.image_dataset(ex, "train", s.size, s.batch, shuffle=True, repeat=True)
    fed = {
        "pipeline": _images_per_s(models[best], pipeline, s),
        "memory": _images_per_s(models[best], memory, s),
    }
    print(
        f"gpu_check: {best} fed by components/data.py {fed['pipeline']:.1f} images/s, from memory "
        f"{fed['memory']:.1f}",
        flush=True,
    )
    return report(
        "gpu_check_smoke" if smoke else "gpu_check",
        rates[best],
        rates["float32"],
        "fine-tune images/s, fastest variant vs float32",
        "none set: measure (input pipeline >= 0.9 as on CPU)",
        results_dir=out,
        fastest=best,
        images_per_s={k: round(v, 1) for k, v in rates.items()},
        mixed_speedup=round(rates["mixed_float16"] / rates["float32"], 3),
        mixed_xla_speedup=round(rates["mixed_float16_xla"] / rates["float32"], 3),
        input_pipeline_ratio=round(fed["pipeline"] / fed["memory"], 3),
        input_pipeline_images_per_s={k: round(v, 1) for k, v in fed.items()},
        gpus=devices,
        smoke=smoke,
        tensorflow=tf.__version__,
        setup=f"components.model {s.backbone} alpha {s.alpha}, all layers trainable, {s.size} "
        "px, batch "
        f"{s.batch}, {s.warmup} warm-up + {s.steps} timed steps, Adam; input pipeline: "
        f"{s.classes * s.per_class} demo images through ingest and components/data.py",
    )


if __name__ == "__main__":
    smoke = os.environ.get("GPU_CHECK_SMOKE", "") not in ("", "0")
    main(smoke, Path(os.environ["OUT"]) if os.environ.get("OUT") else RESULTS)
