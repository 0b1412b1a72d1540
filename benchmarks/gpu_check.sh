#!/usr/bin/env bash
# One prepared GPU check (<= 8 min) for a lent accelerator machine:
# fine-tune throughput fp32 vs mixed_float16 vs mixed + XLA on MobileNetV2 at 224 px,
# and the input-pipeline ratio there. Prints one JSON line; writes $OUT/gpu_check.json.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results}"
PY="${PY:-python3}"
if ! $PY -c "import tensorflow" 2>/dev/null; then
  $PY -m pip install -q 'tensorflow[and-cuda]>=2.21,<2.22' 'keras>=3.10,<4' pydantic pyyaml pillow matplotlib rich
fi
timeout 450 $PY - "$OUT" <<'PY'
import json, os, sys, time, tempfile, platform
import numpy as np, tensorflow as tf, keras
sys.path.insert(0, ".")
out = sys.argv[1]
gpus = tf.config.list_physical_devices("GPU")
res = {"name": "gpu_check", "gpus": [g.name for g in gpus], "date": time.strftime("%Y-%m-%d"),
       "machine": platform.node()}
def bench(policy, jit, steps=30, batch=64, size=224):
    keras.mixed_precision.set_global_policy(policy)
    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(size, size, 3))
    x = keras.layers.GlobalAveragePooling2D()(base.output)
    m = keras.Model(base.input, keras.layers.Dense(5, dtype="float32")(x))
    m.compile(keras.optimizers.Adam(1e-4), keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit)
    xs = tf.random.uniform((batch, size, size, 3)); ys = tf.zeros((batch,), tf.int32)
    ds = tf.data.Dataset.from_tensors((xs, ys)).repeat()
    m.fit(ds, steps_per_epoch=5, epochs=1, verbose=0)
    t0 = time.time(); m.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps * batch / (time.time() - t0)
res["fp32_img_s"] = bench("float32", False)
res["mixed_img_s"] = bench("mixed_float16", False)
res["mixed_xla_img_s"] = bench("mixed_float16", True)
res["mixed_speedup"] = res["mixed_img_s"] / res["fp32_img_s"]
res["mixed_xla_speedup"] = res["mixed_xla_img_s"] / res["fp32_img_s"]
try:
    from benchmarks.common import demo_examples
    from components import data as gdata
    ex = demo_examples(__import__("pathlib").Path(tempfile.mkdtemp()), classes=3, per_class=300, size=224)
    ds = gdata.image_dataset(ex, "train", 224, 64, shuffle=True, repeat=True)
    it = iter(ds); next(it); t0 = time.time()
    for _ in range(30): next(it)
    res["input_pipeline_img_s"] = 30 * 64 / (time.time() - t0)
    res["input_pipeline_ratio_vs_fp32_compute"] = res["input_pipeline_img_s"] / res["fp32_img_s"]
except Exception as e:  # the pipeline part needs the project installed
    res["input_pipeline_error"] = str(e)[:200]
os.makedirs(out, exist_ok=True)
json.dump(res, open(os.path.join(out, "gpu_check.json"), "w"), indent=2)
print(json.dumps(res))
PY
