"""Copies of a real export that are a different model (changed weights), for push tests.

Push refuses a model whose weights the destination already has, so a test that needs a second
model scales the Dense kernels in the copy's checkpoint (read and rewritten with TF's ops): the
result is a real SavedModel that loads and serves, with different weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import tensorflow as tf


def scale_dense_kernels(saved_model_dir: Path, scale: float) -> list[str]:
    """Multiply every 2-D float tensor (the Dense kernels) in the checkpoint by `scale`."""
    prefix = str(saved_model_dir / "variables" / "variables")
    reader = tf.train.load_checkpoint(prefix)
    names = sorted(reader.get_variable_to_dtype_map())
    values = [reader.get_tensor(n) for n in names]
    scaled = []
    for i, v in enumerate(values):
        if isinstance(v, np.ndarray) and v.dtype == np.float32 and v.ndim == 2:
            values[i] = v * np.float32(scale)
            scaled.append(names[i])
    assert scaled, f"no Dense kernel in {prefix}"
    tf.raw_ops.SaveV2(
        prefix=prefix,
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(v) for v in values],
    )
    return scaled


def other_model_export(export_dir: str | Path, dst: Path, *, scale: float, pad_files: int = 0):
    """Copy of an export dir (export.json + <model>/<version>/) holding a different model.

    pad_files adds that many 4 KB files under assets.extra/pad/ (ignored by TF Serving), to
    make a push that takes a while to copy.
    """
    shutil.copytree(export_dir, dst)
    meta = json.loads((dst / "export.json").read_text())
    vdir = dst / meta["model_name"] / str(meta["version"])
    if scale != 1.0:
        scale_dense_kernels(vdir, scale)
    if pad_files:
        pad = vdir / "assets.extra" / "pad"
        pad.mkdir(parents=True)
        blob = bytes(range(256)) * 16
        for k in range(pad_files):
            (pad / f"{k:05d}.bin").write_bytes(blob)
    from graft.components.hashing import weights_sha256

    # as export writes them: the new weights' checksum with the copy's path
    meta.update(
        path=str(vdir),
        model_sha256=f"{meta['model_sha256']}-x{scale}",
        weights_sha256=weights_sha256(str(vdir)),
    )
    (dst / "export.json").write_text(json.dumps(meta))
    return dst
