"""data.resize (squash | crop | pad): one function makes the model input everywhere (issue #34).

Parity: the pixels the exported SavedModel builds from raw bytes (its `preprocess` signature,
what serving_default feeds the model) equal the pixels evaluation and training built from the
same bytes, per mode, over portrait, landscape, square, smaller-than-size and 10:1 images,
grayscale and RGBA, JPEG and PNG. Then the geometry each mode claims, the feature store's key,
advise's decision with its evidence, and a whole run trained with crop.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO, SHALLOW_WEIGHTS, tiny_config

from graft.components import data as gdata

SIZE = 32
MODES = [gdata.Geometry("squash"), gdata.Geometry("crop"), gdata.Geometry("pad")]
RED, GREEN, BLUE = (230, 20, 20), (20, 230, 20), (20, 20, 230)


def _png(arr: np.ndarray) -> bytes:
    return tf.io.encode_png(tf.constant(arr, tf.uint8)).numpy()


def _jpeg(arr: np.ndarray) -> bytes:
    return tf.io.encode_jpeg(tf.constant(arr, tf.uint8), quality=95).numpy()


def _noise(h: int, w: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Smooth random content (blocks of 4 px), so the resampling has something to get wrong."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (-(-h // 4), -(-w // 4), channels), dtype=np.uint8)
    return np.repeat(np.repeat(small, 4, axis=0), 4, axis=1)[:h, :w]


def _images() -> dict[str, bytes]:
    return {
        "portrait.jpg": _jpeg(_noise(60, 40, seed=1)),
        "landscape.jpg": _jpeg(_noise(40, 70, seed=2)),
        "square.png": _png(_noise(50, 50, seed=3)),
        "smaller_than_size.png": _png(_noise(12, 20, seed=4)),
        "wide_10to1.jpg": _jpeg(_noise(24, 240, seed=5)),
        "tall_10to1.png": _png(_noise(240, 24, seed=6)),
        "gray.png": _png(_noise(45, 30, channels=1, seed=7)),
        "gray.jpg": _jpeg(_noise(30, 45, channels=1, seed=8)),
        "rgba.png": _png(_noise(30, 45, channels=4, seed=9)),
    }


def _examples_dir(root: Path, blobs: list[bytes]) -> Path:
    """A minimal ingest output: one gzip TFRecord shard of the test split, labels, manifest."""
    root.mkdir(parents=True)
    opts = tf.io.TFRecordOptions(compression_type="GZIP")
    rows = []
    with tf.io.TFRecordWriter(str(root / "test-00000-of-00001.tfrecord.gz"), opts) as w:
        for i, b in enumerate(blobs):
            sha = hashlib.sha256(b).hexdigest()
            feats = {
                "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b])),
                "image/sha256": tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[sha.encode()])
                ),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 2])),
            }
            w.write(tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString())
            rows.append({"split": "test", "sha256": sha, "label": "ab"[i % 2]})
    (root / "labels.json").write_text(json.dumps(["a", "b"]))
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _tiny_model():
    import keras

    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs / 255.0)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))


# ------------------------------------------------------------------- parity, per mode


@pytest.mark.parametrize("geometry", MODES, ids=lambda g: g.resize)
def test_saved_model_pixels_equal_what_evaluation_and_training_used(geometry, tmp_path):
    from graft.components.evaluate import _pixels, _test_data
    from graft.components.export import write_saved_model

    images = _images()
    blobs = list(images.values())
    examples = _examples_dir(tmp_path / "examples", blobs)
    stored, _, _ = _test_data(str(examples), set())  # evaluation's order: by sha256
    evaluated = _pixels(stored, SIZE, geometry)  # evaluation's pixels
    trained = np.concatenate(
        [
            x.numpy()
            for x, _ in gdata.image_dataset(str(examples), "test", SIZE, 64, geometry=geometry)
        ]
    )
    in_files = [b for b, _ in gdata.raw_dataset(str(examples), "test").as_numpy_iterator()]
    trained = trained[[in_files.index(b) for b in stored]]  # training's, in evaluation's order
    model = _tiny_model()
    write_saved_model(model, ["a", "b"], str(tmp_path / "1"), size=SIZE, geometry=geometry)
    loaded = tf.saved_model.load(str(tmp_path / "1"))
    served = loaded.signatures["preprocess"](image_bytes=tf.constant(stored))["pixels"].numpy()
    assert served.shape == evaluated.shape == trained.shape == (len(blobs), SIZE, SIZE, 3)
    name_of = {b: name for name, b in images.items()}
    diff = {name_of[b]: float(np.abs(served[i] - evaluated[i]).max()) for i, b in enumerate(stored)}
    print(f"{geometry.resize}: SavedModel vs evaluation pixels, max abs diff per image: {diff}")
    assert max(diff.values()) <= 1e-3, diff  # 0..255 scale: identical up to float rounding
    assert float(np.abs(trained - evaluated).max()) <= 1e-3
    # and serving_default scores exactly those pixels
    probs = loaded.signatures["serving_default"](image_bytes=tf.constant(stored))["probabilities"]
    want = model(tf.constant(evaluated), training=False).numpy()
    assert float(np.abs(probs.numpy() - want).max()) <= 1e-5


# ------------------------------------------------------------------- what each mode claims


def _bands(h: int, w: int) -> np.ndarray:
    """Red first tenth, blue last tenth (along the longer side), green between."""
    img = np.empty((h, w, 3), np.uint8)
    img[:] = GREEN
    if w >= h:
        img[:, : w // 10], img[:, -(w // 10) :] = RED, BLUE
    else:
        img[: h // 10], img[-(h // 10) :] = RED, BLUE
    return img


def _has(pixels: np.ndarray, colour, tol: float = 40) -> bool:
    return bool((np.abs(pixels - np.array(colour, np.float32)).max(axis=-1) < tol).any())


def _shape(img: np.ndarray, mode: str, size: int = SIZE) -> np.ndarray:
    return gdata.decode_and_resize(tf.constant(_png(img)), size, gdata.Geometry(mode)).numpy()


def test_pad_keeps_all_of_a_10_to_1_image_and_crop_keeps_its_centre():
    wide = _bands(32, 320)
    pad, crop, squash = (_shape(wide, m) for m in ("pad", "crop", "squash"))
    # pad: both ends kept, the image 32 x round(32 * 32 / 320) = 3 rows, centred on the mean colour
    rows = [r for r in range(SIZE) if not np.allclose(pad[r], gdata.PAD_RGB, atol=1e-3)]
    assert rows == [14, 15, 16], rows
    assert _has(pad[rows[1], :4], RED) and _has(pad[rows[1], -4:], BLUE)
    # crop: only the centre of the longer side survives (the ends are 10% each)
    assert not _has(crop, RED) and not _has(crop, BLUE)
    assert np.allclose(crop, GREEN, atol=2)
    # squash: everything, stretched over the whole square
    assert _has(squash[:, :2], RED) and _has(squash[:, -2:], BLUE)
    assert _has(squash[0], RED) and _has(squash[-1], BLUE)
    tall = _bands(320, 32)
    pad_t = _shape(tall, "pad")
    cols = [c for c in range(SIZE) if not np.allclose(pad_t[:, c], gdata.PAD_RGB, atol=1e-3)]
    assert cols == [14, 15, 16] and _has(pad_t[:4], RED) and _has(pad_t[-4:], BLUE)
    assert not _has(_shape(tall, "crop"), RED)


def test_crop_takes_the_centre_square_of_the_shorter_side_over_crop_fraction():
    # a 64 x 96 landscape with a 2 px frame: 64 -> round(32 / 0.875) = 37 rows, 55 columns, then
    # the centre 32 x 32: the frame and the outer 12 columns each side are cut away
    img = np.full((64, 96, 3), 128, np.uint8)
    img[:2], img[-2:], img[:, :2], img[:, -2:] = RED, RED, RED, RED
    img[28:36, 44:52] = BLUE  # the centre
    crop = _shape(img, "crop")
    assert not _has(crop, RED) and _has(crop[14:18, 14:18], BLUE)
    assert _has(_shape(img, "squash")[0], RED)  # squash keeps the frame
    # crop_fraction 1: the shorter side is the size, so a square image is only resized
    square = _noise(64, 64, seed=11)
    whole = gdata.decode_and_resize(tf.constant(_png(square)), SIZE, gdata.Geometry("crop", 1.0))
    assert np.abs(whole.numpy() - _shape(square, "squash")).max() <= 1e-3


def test_small_gray_and_rgba_images_take_every_mode():
    small = _noise(12, 20, seed=12)
    for mode in ("squash", "crop", "pad"):
        assert _shape(small, mode).shape == (SIZE, SIZE, 3)
    pad = _shape(small, "pad")  # 20 -> 32 wide, 12 -> round(19.2) = 19 rows, bars above and below
    content = [r for r in range(SIZE) if not np.allclose(pad[r], gdata.PAD_RGB, atol=1e-3)]
    assert len(content) == 19
    gray = _noise(30, 45, channels=1, seed=13)
    for mode in ("squash", "crop", "pad"):
        px = _shape(gray, mode)
        inside = px if mode != "pad" else px[np.abs(px - gdata.PAD_RGB).max(axis=-1) > 1e-3]
        assert np.abs(inside[..., 0] - inside[..., 1]).max() <= 1e-3  # gray stays gray
    rgba = _noise(30, 45, channels=4, seed=14)
    for mode in ("squash", "crop", "pad"):
        want = _shape(np.ascontiguousarray(rgba[..., :3]), mode)  # alpha dropped, nothing else
        assert np.abs(_shape(rgba, mode) - want).max() <= 1e-3


def test_geometry_names_its_key_and_refuses_what_it_cannot_do():
    from graft.core.config import ConfigError, parse_config

    assert [g.key for g in MODES] == ["squash", "crop0.875", "pad"]
    assert gdata.Geometry("crop", 0.9).key == "crop0.9"
    assert gdata.Geometry.of(parse_config({"data": {"path": "x"}}).data) == gdata.SQUASH
    cfg = parse_config({"data": {"path": "x", "resize": "crop", "crop_fraction": 0.8}})
    assert gdata.Geometry.of(cfg.data) == gdata.Geometry("crop", 0.8)
    with pytest.raises(ConfigError, match="data.resize"):
        parse_config({"data": {"path": "x", "resize": "zoom"}})
    with pytest.raises(ConfigError, match="data.crop_fraction"):
        parse_config({"data": {"path": "x", "crop_fraction": 1.5}})
    with pytest.raises(ValueError, match="data.resize 'zoom'"):
        gdata.Geometry("zoom")


def test_feature_store_keys_features_by_geometry(tmp_path):
    from graft.components import features as gfeat

    folders = {
        g.key: gfeat.FeatureStore(str(tmp_path), "fp", 48, g).folder("out_relu") for g in MODES
    }
    # squash keeps the layout from before data.resize: a store written then stays valid
    assert folders["squash"] == str(tmp_path / "fp" / "48" / "out_relu")
    assert folders["crop0.875"] == str(tmp_path / "fp" / "48-crop0.875" / "out_relu")
    assert folders["pad"] == str(tmp_path / "fp" / "48-pad" / "out_relu")
    crop_store = gfeat.FeatureStore(str(tmp_path), "fp", 48, gdata.Geometry("crop"))
    with pytest.raises(ValueError, match="never another's"):
        gfeat.split_features(
            str(tmp_path), "train", ["x"], extractor=None, store=crop_store, geometry=gdata.SQUASH
        )


GEOMETRY_PARAM = "geometry"


def _geometry_functions(files: list[Path]) -> dict[str, int | None]:
    """Functions with a `geometry` parameter: name -> its positional index (None: keyword)."""
    out: dict[str, int | None] = {}
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.FunctionDef):
                names = [a.arg for a in node.args.posonlyargs + node.args.args]
                kwonly = [a.arg for a in node.args.kwonlyargs]
                if GEOMETRY_PARAM in names:
                    out[node.name] = names.index(GEOMETRY_PARAM)
                elif GEOMETRY_PARAM in kwonly:
                    out[node.name] = None
    out["FeatureStore"] = 3  # a dataclass: root, fingerprint, size, geometry
    return out


def test_every_call_that_makes_pixels_passes_the_geometry():
    """Graft's own code never falls back to the default squash by leaving the geometry out."""
    files = [p for d in ("components", "pipeline") for p in sorted((REPO / d).glob("*.py"))]
    wanted = _geometry_functions(files)
    assert {"decode_and_resize", "image_dataset", "split_features", "train_head"} <= set(wanted)
    missing = []
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name not in wanted:
                continue
            index = wanted[name]
            by_keyword = any(k.arg in (GEOMETRY_PARAM, None) for k in node.keywords)
            by_position = index is not None and len(node.args) > index
            if not (by_keyword or by_position):
                missing.append(f"{f.relative_to(REPO)}:{node.lineno} {name}(...)")
    assert not missing, "calls that leave data.resize out:\n" + "\n".join(missing)


# ------------------------------------------------------------------- advise


def test_plan_geometry_keeps_another_mode_only_beyond_the_noise():
    from graft.components.advise import Plan, plan_geometry

    def geo(crop, pad):
        modes = {"squash": {"accuracy": 0.8, "low": 0.7, "high": 0.9}}
        for m, (d, lo, hi) in (("crop", crop), ("pad", pad)):
            gain = {"difference": d, "low": lo, "high": hi, "n": 200}
            modes[m] = {"accuracy": 0.8 + d, "low": 0.7, "high": 0.9, "gain": gain}
        return {"size": 224, "layer": "out_relu", "n": 200, "folds": 5, "modes": modes}

    def chosen(g):
        p = Plan("auto", {}, {}, [])
        plan_geometry(p, g)
        d = next(x for x in p.decisions if x.what == "geometry")
        assert d.choice == p.overrides["data.resize"]
        return d

    d = chosen(geo((0.04, -0.01, 0.09), (0.02, -0.02, 0.06)))  # inside the noise: the default
    assert d.choice == "squash" and "no mode beats squash beyond the noise" in d.reason
    assert "crop 0.840 (paired +0.040 [-0.010, +0.090])" in d.reason
    assert chosen(geo((0.05, 0.01, 0.09), (-0.02, -0.05, 0.01))).choice == "crop"
    assert chosen(geo((0.03, 0.01, 0.05), (0.06, 0.02, 0.10))).choice == "pad"  # larger gain
    assert chosen(geo((-0.05, -0.09, -0.01), (0.0, -0.01, 0.01))).choice == "squash"
    # an ImageNet base's own transform is crop: it stays unless another mode wins beyond the noise
    g = geo((0.0, 0.0, 0.0), (0.0, 0.0, 0.0))
    g["default"] = "crop"
    g["modes"]["squash"]["gain"] = {"difference": 0.02, "low": -0.01, "high": 0.05, "n": 200}
    d = chosen(g)
    assert d.choice == "crop" and "so the base's own (crop)" in d.reason
    g["modes"]["squash"]["gain"] = {"difference": 0.03, "low": 0.01, "high": 0.05, "n": 200}
    assert chosen(g).choice == "squash"  # textures-like: cropping cuts texture away
    # the bar is the one-sided 90% bound (low90) where the probes give it: chest_xray-like, the
    # 95% interval touches 0 but the gain is more likely real than not at 9 to 1
    g["modes"]["squash"]["gain"] = {
        "difference": 0.0095,
        "low": -0.001,
        "high": 0.0195,
        "low90": 0.003,
        "n": 2000,
    }
    d = chosen(g)
    assert d.choice == "squash" and "90% bound +0.003" in d.reason
    g["modes"]["squash"]["gain"] = {
        "difference": 0.009,
        "low": -0.0105,
        "high": 0.0295,
        "low90": -0.004,
        "n": 2000,
    }
    assert chosen(g).choice == "crop"  # flowers-like: inside the noise


def test_pad_is_squash_on_square_images():
    """advise skips pad's probe pass when every probed image is square: the pixels must agree."""
    import numpy as np
    import tensorflow as tf

    from graft.components import data as gdata

    for side in (37, 64, 300):
        img = tf.cast(
            tf.random.uniform([side, side, 3], 0, 256, seed=side, dtype=tf.int32), tf.uint8
        )
        png = tf.io.encode_png(img)
        squash = gdata.decode_and_resize(png, 48, gdata.Geometry("squash"))
        pad = gdata.decode_and_resize(png, 48, gdata.Geometry("pad"))
        assert np.array_equal(squash.numpy(), pad.numpy()), side
    wide = tf.io.encode_png(tf.zeros([30, 60, 3], tf.uint8))  # and not on a wide one
    a = gdata.decode_and_resize(wide, 48, gdata.Geometry("squash")).numpy()
    b = gdata.decode_and_resize(wide, 48, gdata.Geometry("pad")).numpy()
    assert not np.array_equal(a, b)


def test_the_bases_own_geometry_is_crop_for_imagenet_weights_only():
    from graft.components.advise import base_geometry
    from graft.core.config import BaseConfig
    from graft.core.paths import demo_weights

    assert base_geometry(BaseConfig()) == "crop"  # weights: imagenet
    assert base_geometry(BaseConfig(weights="/w/mobilenet_v2_no_top.h5")) == "crop"
    assert base_geometry(BaseConfig(weights="demo")) == "squash"
    assert base_geometry(BaseConfig(weights=demo_weights())) == "squash"
    assert base_geometry(BaseConfig(weights=SHALLOW_WEIGHTS)) == "squash"  # the tests' base
    assert base_geometry(BaseConfig(weights=None)) == "squash"


def _advice(run) -> tuple[dict, str]:
    out = run["steps"]["advise"]["output"]
    return json.load(open(os.path.join(out, "advice.json"))), out


@pytest.mark.slow  # auto_run trains a model
def test_advise_records_the_geometry_decision_with_its_evidence(auto_run):
    from graft.core.config import parse_config
    from graft.pipeline.runner import run_pipeline

    advice, out = _advice(auto_run["run"])  # recipe auto, 3 folds (conftest)
    geo = advice["evidence"]["geometry"]
    assert set(geo["modes"]) == {"squash", "crop", "pad"} and geo["size"] == 48
    assert geo["default"] == "squash"  # the demo base was pretrained on squashed images
    assert geo["n"] == advice["evidence"]["n_train"] and geo["folds"] == 3
    for mode, r in geo["modes"].items():
        assert 0 <= r["low"] <= r["accuracy"] <= r["high"] <= 1, mode
        if mode != "squash":
            g = r["gain"]
            assert g["n"] == geo["n"] and g["low"] <= g["difference"] <= g["high"]
            assert (
                abs(g["difference"] - (r["accuracy"] - geo["modes"]["squash"]["accuracy"])) < 1e-9
            )
    # the rule, applied to the recorded evidence
    wins = {m: r["gain"] for m, r in geo["modes"].items() if "gain" in r and r["gain"]["low90"] > 0}
    for r in geo["modes"].values():  # the 90% bound lies inside the 95% interval
        if "gain" in r:
            assert r["gain"]["low"] <= r["gain"]["low90"] <= r["gain"]["difference"]
    want = max(wins, key=lambda m: wins[m]["difference"]) if wins else "squash"
    decision = next(d for d in advice["decisions"] if d["what"] == "geometry")
    assert decision["choice"] == want == advice["overrides"]["data.resize"]
    assert "paired" in decision["reason"] and str(geo["n"]) in decision["reason"]
    md = open(os.path.join(out, "advice.md")).read()
    assert "| crop |" in md and "paired gain over squash" in md

    # your own data.resize is kept, and advise says what it would have chosen
    tmp, data = Path(auto_run["tmp"]), Path(auto_run["data"])  # its store: probes not re-run
    raw = tiny_config(tmp, data, recipe="auto", advise__folds=3, advise__keep=["data.resize"])
    raw["data"]["resize"] = "pad"
    kept, _ = _advice(run_pipeline(parse_config(raw), until="advise"))
    assert "data.resize" not in kept["overrides"]
    assert kept["kept"]["data.resize"] == {"yours": {"data.resize": "pad"}, "advise": want}
    assert kept["evidence"]["geometry"]["modes"] == geo["modes"]  # the same probes, from the store


# ------------------------------------------------------------------- a run trained with crop


@pytest.mark.slow  # trains a model
def test_a_run_with_crop_serves_crop_and_says_so(tmp_path, tiny_data):
    from graft.components import tflite
    from graft.core.config import parse_config
    from graft.pipeline.runner import run_pipeline
    from graft.serving.local import LocalPredictor

    raw = tiny_config(
        tmp_path,
        tiny_data,
        fine_tune__enabled=False,
        train_head__epochs=2,
        export__tflite=["float32"],
        features__store=str(tmp_path / "features"),
    )
    raw["data"]["resize"] = "crop"
    run = run_pipeline(parse_config(raw))
    assert run["status"] == "succeeded"
    version = run["steps"]["push"]["summary"]["destination"]
    crop = gdata.Geometry("crop")
    card = json.load(open(os.path.join(version, "model_card.json")))
    assert card["input"]["resize"] == "crop" and card["input"]["crop_fraction"] == 0.875
    assert "crop: shorter side to 55 px" in open(os.path.join(version, "model_card.md")).read()
    assert (
        json.load(open(os.path.join(version, "assets", "preprocessing.json")))["resize"] == "crop"
    )
    edge = json.load(open(os.path.join(version, "assets.extra", "tflite.json")))
    assert edge["resize"] == "crop" and edge["crop_fraction"] == 0.875
    model_file = os.path.join(version, "assets.extra", "tiny_float32.tflite")
    assert tflite.geometry_beside(model_file) == crop
    # the head stage's features were stored under the crop geometry, never squash's folder
    shapes = {p.name for p in (tmp_path / "features").glob("*/*")}
    assert shapes == {"48-crop0.875"}, shapes
    # serving and graft predict shape as training did: a 10:1 image's ends never reach the model
    wide = _bands(48, 480)
    blob = _png(wide)
    sm = tf.saved_model.load(version)
    px = sm.signatures["preprocess"](image_bytes=tf.constant([blob]))["pixels"].numpy()[0]
    assert np.abs(px - gdata.decode_and_resize(tf.constant(blob), 48, crop).numpy()).max() <= 1e-3
    assert not _has(px, RED) and not _has(px, BLUE)
    photo = tmp_path / "wide.png"
    photo.write_bytes(blob)
    pred = LocalPredictor(version).predict([str(photo)], top_k=1)[0]
    want = sm.signatures["predict_pixels"](pixels=tf.constant(px[None]))
    assert pred.labels[0] == want["classes"].numpy()[0][0].decode()
