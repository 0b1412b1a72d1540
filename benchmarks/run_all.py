"""`make bench`: every benchmark, one JSON line each (results in benchmarks/results/), then the
README's table of current figures regenerated from them."""

from benchmarks import (
    demo_e2e,
    head_cache,
    ingest_bench,
    input_pipeline,
    serving_bench,
    serving_load,
    table,
)

if __name__ == "__main__":
    demo_e2e.main()  # also leaves models/demo for the serving benchmark
    head_cache.main()
    input_pipeline.main()
    ingest_bench.main()
    serving_bench.main()
    serving_load.main()  # uses models/demo too
    table.main([])  # benchmarks/README.md's table from the results just written
