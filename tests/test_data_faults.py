"""Bad data at ingest: streamed CSV manifests, the pixel cap, one decode path, escaped names."""

import io
import os
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graft.components.images import BadImage, normalise
from graft.components.sources import DataLayoutError, check_labels, list_csv, list_folder

# ---------------------------------------------------------------- CSV manifests (issue 29.3)


def test_csv_manifest_fails_at_the_first_bad_line_without_reading_the_rest(tmp_path):
    """50 MB of junk: the error names the CSV, line 1 and the columns, long before 50 MB."""
    junk = tmp_path / "big.csv"
    line = b"lorem ipsum dolor sit amet no commas here at all " * 4 + b"\n"
    with open(junk, "wb") as f:
        f.write(line * (50 * 2**20 // len(line)))
    t0 = time.monotonic()
    with pytest.raises(DataLayoutError) as e:
        list_csv(str(junk))
    msg = str(e.value)
    assert f"{junk} line 1:" in msg and "path,label[,split]" in msg
    assert time.monotonic() - t0 < 5  # one 1 MiB chunk read, not 50 MB parsed


def test_csv_bad_line_after_good_ones_is_named_with_its_number(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    csv = tmp_path / "m.csv"
    csv.write_text("path,label\na.jpg,cat\na.jpg,dog\nonly-a-path\na.jpg,cat\n")
    with pytest.raises(DataLayoutError, match=r"m\.csv line 4: got \['only-a-path'\]; expected"):
        list_csv(str(csv))
    csv.write_bytes(b"path,label\na.jpg,cat\n\xff\xfe,dog\n")
    with pytest.raises(DataLayoutError, match=r"m\.csv line 3: not UTF-8"):
        list_csv(str(csv))


def test_csv_quoted_newline_and_crlf_still_read(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_bytes(b'path,label,split\r\n"a\nb.jpg",cat,train\r\nc.jpg,dog,test\r\n')
    got = list_csv(str(csv))
    assert [(os.path.basename(i["path"]), i["label"], i["split"]) for i in got.items] == [
        ("a\nb.jpg", "cat", "train"),
        ("c.jpg", "dog", "test"),
    ]


def test_csv_size_limit_is_its_own_and_dev_zero_fails_fast(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text("path,label\n" + "a.jpg,cat\n" * 300_000)  # ~3 MB of good rows
    with pytest.raises(DataLayoutError, match=r"over data\.max_csv_bytes \(2097152 bytes\)"):
        list_csv(str(csv), max_bytes=2 * 2**20)
    assert len(list_csv(str(csv), max_bytes=4 * 2**20).items) == 300_000
    if os.path.exists("/dev/zero"):
        t0 = time.monotonic()
        with pytest.raises(DataLayoutError) as e:
            list_csv("/dev/zero")
        assert "/dev/zero line 1:" in str(e.value) and "max_file_bytes" not in str(e.value)
        assert time.monotonic() - t0 < 5


def test_csv_limit_comes_from_the_config(tmp_path):
    from graft.components.ingest import ingest
    from graft.core.config import DataConfig

    csv = tmp_path / "m.csv"
    csv.write_text("path,label\n" + "a.jpg,cat\n" * 200)
    cfg = DataConfig(path=str(csv), source="csv", max_csv_bytes=1000, num_workers=1)
    with pytest.raises(DataLayoutError, match=r"data\.max_csv_bytes \(1000 bytes\)"):
        ingest(cfg, str(tmp_path / "out"))


# ---------------------------------------------------------------- one decode path (29.9)


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _mode_matrix() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    pixels = np.kron(rng.integers(0, 256, (5, 6, 3), dtype=np.uint8), np.ones((8, 8, 1), "uint8"))
    rgb = Image.fromarray(pixels, "RGB")
    alpha = rng.integers(0, 256, (40, 48), dtype=np.uint8)
    rgba = Image.fromarray(np.dstack([pixels, alpha]), "RGBA")
    la = Image.fromarray(np.dstack([pixels[..., 0], alpha]), "LA")
    palette_t = rgb.convert("P")
    exif = rgb.getexif()
    exif[0x0112] = 6  # "rotate 90": neither Pillow here nor TF's decoders apply it
    frames = [Image.fromarray(np.roll(pixels, 8 * i, 0), "RGB").convert("P") for i in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=40)
    return {
        "1-bit png": _save(rgb.convert("1"), "PNG"),
        "1-bit bmp": _save(rgb.convert("1"), "BMP"),
        "L png": _save(rgb.convert("L"), "PNG"),
        "L bmp": _save(rgb.convert("L"), "BMP"),
        "P png": _save(rgb.convert("P"), "PNG"),
        "P png transparent": _save(palette_t, "PNG", transparency=0),
        "P bmp": _save(rgb.convert("P"), "BMP"),
        "LA png": _save(la, "PNG"),
        "RGBA png": _save(rgba, "PNG"),
        "RGB bmp": _save(rgb, "BMP"),
        "CMYK jpeg": _save(rgb.convert("CMYK"), "JPEG", quality=90),
        "16-bit png": _save(
            Image.fromarray(rng.integers(0, 2**16, (40, 48), dtype="uint16")), "PNG"
        ),
        "grayscale jpeg": _save(rgb.convert("L"), "JPEG", quality=90),
        "progressive jpeg": _save(rgb, "JPEG", quality=90, progressive=True),
        "EXIF-rotated jpeg": _save(rgb, "JPEG", quality=90, exif=exif.tobytes()),
        "animated gif": gif.getvalue(),
        "P gif": _save(rgb.convert("P"), "GIF"),
    }


MODES = _mode_matrix()
QUARANTINED = {"1-bit bmp": "1-bit BMP", "P bmp": "palette BMP"}


@pytest.mark.parametrize("name", sorted(MODES))
def test_ingest_stores_the_pixels_serving_decodes_or_quarantines(name):
    """What is trained (ingest's stored bytes through decode_and_resize) equals what is served
    (the client's original file through the same graph function), or ingest refuses it."""
    import tensorflow as tf

    from graft.components.data import decode_and_resize

    data = MODES[name]
    if name in QUARANTINED:
        with pytest.raises(BadImage, match=QUARANTINED[name] + ".*convert it to PNG"):
            normalise(data, max_side=1024)
        return
    stored = normalise(data, max_side=1024)
    size = 40
    trained = decode_and_resize(tf.constant(stored.encoded), size).numpy()
    served = decode_and_resize(tf.constant(data), size).numpy()
    assert trained.shape == served.shape == (size, size, 3)
    np.testing.assert_array_equal(trained, served)


def test_downscaled_alpha_and_16_bit_follow_tensorflows_decoder():
    """Re-encoded (downscaled) images convert as decode_image(channels=3) does: alpha dropped,
    16-bit truncated, so a large RGBA photo is not trained on white where serving sees black."""
    import tensorflow as tf

    clear = Image.new("RGBA", (64, 64), (0, 0, 0, 0))  # fully transparent black
    stored = normalise(_save(clear, "PNG"), max_side=32)
    assert stored.resized
    pixels = tf.io.decode_image(stored.encoded, channels=3).numpy()
    served = tf.io.decode_image(_save(clear, "PNG"), channels=3).numpy()
    assert pixels.max() == 0 and served.max() == 0  # black in both, not white in one
    deep = Image.fromarray(np.full((64, 64), 0x12FF, dtype=np.uint16))
    stored = normalise(_save(deep, "PNG"), max_side=32)
    assert tf.io.decode_image(stored.encoded, channels=3).numpy().max() == 0x12
    assert tf.io.decode_image(_save(deep, "PNG"), channels=3).numpy().max() == 0x12


# ---------------------------------------------------------------- pixel cap (29.10)


def test_max_pixels_quarantines_from_the_header_without_decoding():
    big = _save(Image.new("L", (3000, 2000)), "PNG")
    with pytest.raises(BadImage, match=r"3000x2000 = 6\.0 Mpx is over data\.max_pixels \(5\.0"):
        normalise(big, max_side=1024, max_pixels=5_000_000)
    # a header claiming 40000 x 40000 with no pixel data behind it: refused by size, not by
    # a decode error, so the header alone decided
    header = _save(Image.new("L", (8, 8)), "PNG")
    for side in (12_000, 40_000):  # under Pillow's own bomb limit, and past it
        ihdr = side.to_bytes(4, "big") * 2 + header[24:29]
        crc = zlib.crc32(b"IHDR" + ihdr).to_bytes(4, "big")
        forged = header[:16] + ihdr + crc + header[33:]
        with pytest.raises(BadImage, match=r"over data\.max_pixels \(50\.0 Mpx\)"):
            normalise(forged, max_side=1024, max_pixels=50_000_000)
    assert normalise(big, max_side=1024, max_pixels=6_000_000).resized


def test_max_pixels_reaches_the_quarantine_report(tmp_path):
    import json

    from graft.components.demo_data import generate
    from graft.components.ingest import ingest
    from graft.core.config import DataConfig

    root = tmp_path / "images"
    generate(root, classes=2, per_class=6, size=32, seed=1)
    Image.new("RGB", (200, 200), (9, 9, 9)).save(root / "circle" / "wide.png")
    r = ingest(
        DataConfig(path=str(root), image_size=32, num_workers=1, max_pixels=20_000),
        str(tmp_path / "out"),
    )
    q = json.loads(Path(tmp_path / "out" / "quarantine.json").read_text())
    reasons = {Path(x["path"]).name: x["reason"] for x in q}
    assert "over data.max_pixels" in reasons["wide.png"] and r.quarantined == 1


# ---------------------------------------------------------------- escaped names (29.13)


def test_newline_in_a_class_folder_name_is_printed_escaped(tmp_path):
    root = tmp_path / "images"
    for cls in ("ok", "bad\nname"):
        (root / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / cls / "a.png")
    items = list_folder(str(root)).items
    with pytest.raises(DataLayoutError) as e:
        check_labels(items)
    msg = str(e.value)
    assert "\n" not in msg and "bad\\nname" in msg
    (root / "ok" / "a.png").unlink()
    (root / "ok").rmdir()
    with pytest.raises(DataLayoutError) as e:
        list_folder(str(root))
    assert "bad\\nname" in str(e.value).split("\n")[0]
