"""End of `make demo`: serve the pushed model, query held-out images over gRPC, stop cleanly."""

from __future__ import annotations

import argparse
import os
import sys

from graft.core.log import log
from graft.serving.client import GraftClient
from graft.serving.launch import ServerProcess

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """`make demo`'s last step: serve the pushed demo model and query it with held-out images.

    Args:
        argv: the command line (sys.argv[1:] when None).

    Returns:
        The exit status: 0, also when nothing was pushed (the query is skipped, with a warning).
    """
    ap = argparse.ArgumentParser()
    ap.add_argument("holdout", help="folder of held-out images (<class>/*.jpg)")
    ap.add_argument("--model-base-path", required=True)
    ap.add_argument("--model-name", required=True)
    ap.add_argument("-n", type=int, default=3)
    args = ap.parse_args(argv)
    if not os.path.isdir(args.model_base_path):
        log(
            f"demo: nothing pushed to {args.model_base_path} (model not blessed?); skipping "
            "the query",
            level="warn",
        )
        return 0
    images = sorted(os.path.join(r, f) for r, _, fs in os.walk(args.holdout) for f in fs)[: args.n]
    srv = ServerProcess(args.model_base_path, args.model_name)
    log(f"demo: starting graft serve on {srv.target} ...")
    try:
        srv.wait_healthy()
        with GraftClient(srv.target, args.model_name) as client:
            version = client.status()
            preds = client.predict(images, top_k=3)
        log(f"demo: served versions {[(s['version'], s['state']) for s in version]}")
        for img, p in zip(images, preds, strict=True):
            truth = os.path.basename(os.path.dirname(img))
            top = ", ".join(f"{lab} {s:.2f}" for lab, s in zip(p.labels, p.scores, strict=True))
            print(f"{os.path.relpath(img)} (true: {truth}) -> {top}")
    finally:
        code = srv.stop()
        log(f"demo: server stopped (exit code {code})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
