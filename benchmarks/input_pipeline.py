"""Fine-tune steps/s fed by components/data.py from TFRecords vs in-memory tensors."""

import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO, demo_examples, in_memory_batches, report


def _steps_per_s(model, ds, steps: int) -> float:
    model.fit(ds, steps_per_epoch=3, epochs=1, verbose=0)  # warm up / trace
    t0 = time.time()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps / (time.time() - t0)


def main() -> dict:
    import keras

    from graft.components import data as gdata
    from graft.components import model as gmodel
    from graft.core.config import BaseConfig, HeadConfig, UnfreezeConfig

    tmp = Path(tempfile.mkdtemp())
    ex = demo_examples(tmp, classes=3, per_class=200, size=96)
    size, batch, steps = 96, 32, 25
    model = gmodel.build_model(
        BaseConfig(
            weights=str(REPO / "graft" / "assets" / "demo_base.weights.h5"), kwargs={"alpha": 0.35}
        ),
        HeadConfig(),
        3,
        size,
    )
    gmodel.unfreeze(model, UnfreezeConfig(mode="all"))
    gmodel.compile_for_fit(model, keras.optimizers.Adam(1e-4), metrics=False)
    pipe = gdata.image_dataset(ex, "train", size, batch, shuffle=True, repeat=True)
    mem = in_memory_batches(ex, size, batch)
    naive = gdata.naive_image_dataset(ex, "train", size, batch).repeat()
    # three interleaved rounds, median per feed: a shared machine's speed drifts within minutes
    # (benchmarks/README.md), so one sample per variant in sequence would compare machine states
    rounds = {"memory": [], "pipeline": [], "naive": []}
    for _ in range(3):
        for name, ds in (("memory", mem), ("pipeline", pipe), ("naive", naive)):
            rounds[name].append(round(_steps_per_s(model, ds, steps), 3))
    rates = {k: statistics.median(v) for k, v in rounds.items()}
    compute = rates["memory"]

    # input-only throughput: how fast each pipeline alone delivers batches
    def feed(ds, n=60):
        it = iter(ds)
        next(it)
        t0 = time.time()
        for _ in range(n):
            next(it)
        return n / (time.time() - t0)

    feed_pipe, feed_naive = feed(pipe), feed(naive)
    return report(
        "input_pipeline",
        rates["pipeline"],
        compute,
        "fine-tune steps/s",
        ">= 0.9 of in-memory",
        naive_steps_per_s=round(rates["naive"], 3),
        rounds_steps_per_s=rounds,
        speedup_over_naive=round(rates["pipeline"] / rates["naive"], 3),
        input_only_batches_per_s={
            "pipeline": round(feed_pipe, 1),
            "naive": round(feed_naive, 1),
            "speedup": round(feed_pipe / feed_naive, 2),
        },
        setup=f"mobilenet_v2 alpha 0.35, all layers, {size} px, batch {batch}, {steps} steps",
    )


if __name__ == "__main__":
    main()
