"""train.deterministic: two runs over the same images give bit-identical models, even from two
ingests whose shards hold the images in different orders.

Each run is its own process (op determinism is process-wide, and a re-run is a new
process in real use): the head stage, then fine-tuning on shuffled, augmented batches
read from several shards.
"""

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from graft.components import data as gdata
from graft.components.data import parsed_examples, raw_dataset
from graft.components.demo_data import generate
from graft.components.fitting import load_model, read_history
from graft.components.ingest import ingest
from graft.components.manifest import read_manifest
from graft.core.config import DataConfig

RUN = """
import sys
from graft.components.train import fine_tune, train_head
from graft.core.config import (AugmentConfig, BaseConfig, FineTuneConfig, HeadConfig, TrainConfig,
                             TrainHeadConfig)
ex, out = sys.argv[1], sys.argv[2]
train = TrainConfig(seed=3, deterministic=True)
aug = AugmentConfig(flip="horizontal", rotation=0.1, zoom=0.1, contrast=0.1, translation=0.1)
base = BaseConfig(name="mobilenet", weights=None, kwargs={"alpha": 0.25})
train_head(ex, out + "/head", base=base, head=HeadConfig(fc_size=16), train=train,
           cfg=TrainHeadConfig(epochs=1, batch_size=16, patience=0), augment=aug, image_size=32)
fine_tune(ex, out + "/head", out + "/ft", train=train, augment=aug, image_size=32,
          cfg=FineTuneConfig(epochs=1, batch_size=16, learning_rate=1e-3, patience=0, guard=False))
"""


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> tuple[str, str]:
    """3 demo classes x 40 at 48 px, ingested twice: in 4 shards and in 3."""
    tmp = tmp_path_factory.mktemp("det")
    generate(tmp / "imgs", classes=3, per_class=40, size=48, seed=5)
    for shards in (4, 3):
        data = DataConfig(path=str(tmp / "imgs"), num_workers=1, shards=shards, incremental=False)
        ingest(data, str(tmp / f"ex{shards}"))
    return str(tmp / "ex4"), str(tmp / "ex3")


def _shas(examples: str, **kw) -> list[str]:
    return [
        hashlib.sha256(b).hexdigest()
        for b, _ in raw_dataset(examples, "train", **kw).as_numpy_iterator()
    ]


def test_canonical_reads_give_one_order_whatever_the_shards_and_passes(examples, monkeypatch):
    four, three = examples
    assert sorted(_shas(four)) == sorted(_shas(three))
    assert _shas(four) != _shas(three)  # the shards' orders differ: the case that matters
    one_pass = _shas(four, canonical=True)
    assert one_pass == _shas(three, canonical=True)
    assert sorted(one_pass) == sorted(_shas(four))
    monkeypatch.setattr(gdata, "SORT_PASS_BYTES", 2000)  # several passes, fewer than images
    assert one_pass == _shas(three, canonical=True) == _shas(four, canonical=True)
    stored = {  # encoded bytes' sha256 -> the source file's, which exclusions name
        hashlib.sha256(ex["image/encoded"]).hexdigest(): ex["image/sha256"].decode()
        for ex in parsed_examples(four, "train").as_numpy_iterator()
    }
    dropped = one_pass[5]
    kept = _shas(four, canonical=True, exclude_sha256={stored[dropped]})
    assert kept == [s for s in one_pass if s != dropped]


def _train(examples: str, out) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", RUN, examples, str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_int8_calibration_images_are_the_same_from_either_ingest(examples):
    """The TFLite int8 representative set: chosen by sha256, not by the shards' order."""
    from graft.components.tflite import representative_images

    four, three = (representative_images(ex, 32, n=10) for ex in examples)
    assert four.shape == (10, 32, 32, 3) and four.dtype == np.uint8
    assert np.array_equal(four, three)
    train = {r["sha256"] for r in read_manifest(examples[0]) if r["split"] == "train"}
    assert len(representative_images(examples[0], 32, n=500)) == len(train)  # each image once


def test_the_guards_folds_read_their_images_as_the_deterministic_stage_does(examples):
    """The guard's k-fold fine-tunes: under train.deterministic, the same batches (images,
    augmentation) from either ingest."""
    from graft.components.cv_guard import _fold_datasets, _Recipe
    from graft.core.config import AugmentConfig, FineTuneConfig, TrainHeadConfig

    def batches(ex: str) -> list[np.ndarray]:
        shas = sorted({r["sha256"] for r in read_manifest(ex) if r["split"] == "train"})
        recipe = _Recipe(
            ex, "-", FineTuneConfig(batch_size=8), TrainHeadConfig(), 1, 1,
            AugmentConfig(flip="horizontal", zoom=0.1), 32, set(), 3, False, gdata.SQUASH,
            deterministic=True,
        )  # fmt: skip
        train, _ = _fold_datasets(recipe, 3, set(shas[:60]), set(shas[60:]))
        return [x.numpy() for x, _ in train]

    four, three = batches(examples[0]), batches(examples[1])
    assert len(four) == len(three) > 1
    assert all(np.array_equal(a, b) for a, b in zip(four, three, strict=True))


@pytest.mark.slow  # trains a model twice
def test_deterministic_runs_are_bit_identical(examples, tmp_path):
    _train(examples[0], tmp_path / "a")
    _train(examples[1], tmp_path / "b")
    for stage in ("head", "ft"):
        a, b = (load_model(str(tmp_path / r / stage / "model.keras")) for r in "ab")
        wa, wb = a.get_weights(), b.get_weights()
        assert len(wa) == len(wb) > 0
        for x, y in zip(wa, wb, strict=True):
            assert np.array_equal(x, y), (stage, x.shape)
        ha, hb = (read_history(str(tmp_path / r / stage)) for r in "ab")
        assert ha == hb and len(ha) == 1, (ha, hb)
    # the fine-tune really trained: its weights moved away from the head stage's
    head, ft = (load_model(str(tmp_path / "a" / s / "model.keras")) for s in ("head", "ft"))
    assert any(
        not np.array_equal(x, y) for x, y in zip(head.get_weights(), ft.get_weights(), strict=True)
    )
    result = json.loads((tmp_path / "a" / "ft" / "result.json").read_text())
    assert result["extra"]["deterministic"] is True
