"""The prepared GPU check: fine-tune throughput by precision and XLA, and the input pipeline there.

For a machine with a GPU, TensorFlow's GPU build and Graft's dependencies (the Graft image on
a GPU node has all three); `benchmarks/gpu_check.sh` runs it. It times Graft's own fine-tune
step (components.model: preprocess layer, MobileNetV2 at 224 px, every layer trainable, BN
frozen) on real decoded demo images held in memory, in float32, mixed_float16 and
mixed_float16 + XLA. Then the fastest of the three is fed by components/data.py from the
ingest TFRecords and from memory: the input_pipeline benchmark's ratio, on that machine.
Last, with 2 or more GPUs, the scaling figure: images/s of the same step under
MirroredStrategy on 2 GPUs against 1 GPU, at the same batch per GPU (skipped, saying so,
when fewer than 2 GPUs are visible).

GPU_CHECK_SMOKE=1 runs the same code tiny on the CPU (the suite does, so the script is known
to run before a lent GPU's minutes are spent on it); its result is named gpu_check_smoke.
The smoke run splits the CPU into 2 logical devices, so the MirroredStrategy code runs too
(without XLA, which cannot compile a step over logical CPUs); that ratio is no figure.
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
    cut_at: str | None = None  # base.cut_at: the base read up to this layer


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
# the smoke run proves the script, not the figures: MobileNet v1 (28 layers against 155) read
# up to its third block (base.cut_at, as the tests' tiny bases) traces and compiles several
# times faster on the CPU (the whole v1 took 50 s quiet and 98 s beside other tests), and the
# code path is the same
SMOKE = Settings(
    backbone="mobilenet",
    size=32,
    alpha=0.25,
    batch=8,
    warmup=2,
    steps=3,
    classes=2,
    per_class=16,
    cut_at="conv_pw_3_relu",
)
VARIANTS = (
    ("float32", "float32", False),
    ("mixed_float16", "mixed_float16", False),
    ("mixed_float16_xla", "mixed_float16", True),
)


def _fine_tune_model(policy: str, jit: bool, s: Settings, strategy=None):
    import keras
    import tensorflow as tf

    from graft.components import model as gmodel
    from graft.core.config import BaseConfig, HeadConfig, UnfreezeConfig

    keras.mixed_precision.set_global_policy(policy)
    with (strategy or tf.distribute.get_strategy()).scope():
        model = gmodel.build_model(
            BaseConfig(name=s.backbone, weights=None, kwargs={"alpha": s.alpha}, cut_at=s.cut_at),
            HeadConfig(),
            s.classes,
            s.size,
        )
        gmodel.unfreeze(model, UnfreezeConfig(mode="all"))
        # under mixed_float16 Keras wraps the optimizer in a LossScaleOptimizer, as in fine_tune
        gmodel.compile_for_fit(model, keras.optimizers.Adam(1e-4), metrics=False, jit=jit)
    return model


def _images_per_s(model, ds, s: Settings, batch: int | None = None) -> float:
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
    return s.steps * (batch or s.batch) / (marks[s.warmup + s.steps - 1] - marks[s.warmup - 1])


def mirrored_scaling(devices: list[str], policy: str, jit: bool, ex: str, s: Settings) -> dict:
    """images/s on 2 devices under MirroredStrategy vs 1 device, at the same batch per device.

    The 1-device figure is the default strategy, as Graft trains on one GPU; 2 devices get a
    global batch twice as large, split by the strategy. Skipped, saying why, under 2 devices.
    """
    import tensorflow as tf

    if len(devices) < 2:
        why = (
            f"2-GPU scaling skipped: {len(devices)} GPU(s) visible, MirroredStrategy needs >= 2 "
            "(run on a machine with 2 or more GPUs for this figure)"
        )
        print(f"gpu_check: {why}", flush=True)
        return {"skipped": why}
    rates = {}
    for n, strategy in ((1, None), (2, tf.distribute.MirroredStrategy(devices[:2]))):
        model = _fine_tune_model(policy, jit, s, strategy)
        ds = in_memory_batches(ex, s.size, n * s.batch)
        rates[n] = _images_per_s(model, ds, s, batch=n * s.batch)
    speedup = rates[2] / rates[1]
    print(
        f"gpu_check: MirroredStrategy {rates[2]:.1f} images/s on 2 devices vs {rates[1]:.1f} on "
        f"1: x{speedup:.2f} ({speedup / 2:.0%} scaling efficiency)",
        flush=True,
    )
    return {
        "images_per_s": {"1_device": round(rates[1], 1), "2_devices": round(rates[2], 1)},
        "speedup": round(speedup, 3),
        "efficiency": round(speedup / 2, 3),
        "devices": devices[:2],
        "variant": f"{policy}{' + XLA' if jit else ''}, batch {s.batch} per device",
    }


def main(smoke: bool = False, out: Path | None = None) -> dict:
    import tensorflow as tf

    from graft.components import data as gdata

    s = SMOKE if smoke else FULL
    if smoke:  # before TF makes its devices: 2 logical CPUs for the MirroredStrategy code
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
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
    policy, jit = next((p, j) for n, p, j in VARIANTS if n == best)
    if smoke:
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        scaling = mirrored_scaling(cpus, policy, False, ex, s)
    else:
        scaling = mirrored_scaling([f"/gpu:{i}" for i in range(len(gpus))], policy, jit, ex, s)
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
        mirrored_2_vs_1=scaling,
        gpus=devices,
        smoke=smoke,
        tensorflow=tf.__version__,
        setup=f"components.model {s.backbone} alpha {s.alpha}"
        + (f" read up to {s.cut_at}" if s.cut_at else "")
        + f", all layers trainable, {s.size} px, batch "
        f"{s.batch}, {s.warmup} warm-up + {s.steps} timed steps, Adam; input pipeline: "
        f"{s.classes * s.per_class} demo images through ingest and components/data.py",
    )


if __name__ == "__main__":
    smoke = os.environ.get("GPU_CHECK_SMOKE", "") not in ("", "0")
    main(smoke, Path(os.environ["OUT"]) if os.environ.get("OUT") else RESULTS)
