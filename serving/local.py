"""Batch prediction in this process from an exported SavedModel: no server to start.

It calls the same `serving_default` signature TF Serving and `graft serve` call (encoded
image bytes in, `scores` in label order and `classes` sorted by score out), so its answers
are the server's answers. Used by `graft predict --model-dir`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from graft.core.quiet import import_tensorflow_quietly
from graft.core.versions import version_number

__all__ = ["LocalPredictor", "Prediction", "print_table", "write_csv", "resolve_model_dir"]


@dataclass
class Prediction:
    """Top-k labels and scores for one image; `error` set (and no labels) if it failed."""

    image: str
    labels: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    error: str | None = None


def _has_model(d: Path) -> bool:
    return (d / "saved_model.pb").is_file()


def resolve_model_dir(path: str, version: int | None = None) -> tuple[str, int | None]:
    """A version dir (holds saved_model.pb) as it is; a model base path: its newest version,
    or `version` when given.

    Args:
        path: a SavedModel folder, or a model base path with numbered version folders.
        version: the version to read from a base path (None: the newest).

    Returns:
        (version dir, version number or None when the dir name is not a number).

    Raises:
        FileNotFoundError: the folder or the version is not there (the message names what is).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"model folder not found: {p}")
    if _has_model(p):
        if version is not None and version_number(p.name) != version:
            raise FileNotFoundError(
                f"{p} is one SavedModel, not version {version}: give the model base path"
            )
        return str(p), version_number(p.name)
    versions = sorted(
        (v for d in p.iterdir() if (v := version_number(d.name)) is not None and _has_model(d)),
        reverse=True,
    )
    if not versions:
        raise FileNotFoundError(
            f"{p} is neither a SavedModel (no saved_model.pb) nor a model base path with numbered "
            "version folders (e.g. models/NAME/1/saved_model.pb)"
        )
    if version is None:
        return str(p / str(versions[0])), versions[0]
    if version not in versions:
        raise FileNotFoundError(
            f"no version {version} under {p}; versions: {', '.join(map(str, sorted(versions)))}"
        )
    return str(p / str(version)), version


class LocalPredictor:
    """Loads the SavedModel once and predicts in batches through `serving_default`."""

    def __init__(self, model_dir: str, batch_size: int = 32, version: int | None = None):
        self.tf = import_tensorflow_quietly()
        self.path, self.version = resolve_model_dir(model_dir, version)
        self.batch_size = max(1, batch_size)
        self._fn = self.tf.saved_model.load(self.path).signatures["serving_default"]

    def _call(self, blobs: list[bytes], top_k: int) -> list[tuple[list[str], list[float]]]:
        out = self._fn(image_bytes=self.tf.constant(blobs))
        scores, classes = out["scores"].numpy(), out["classes"].numpy()
        rows = []
        for row, labels in zip(scores, classes, strict=True):
            # either layout: `scores` sorted (paired with `classes`) or, before, in label order
            ranked = sorted((float(s) for s in row), reverse=True)
            rows.append(([b.decode() for b in labels[:top_k]], ranked[:top_k]))
        return rows

    def predict(self, images: list[str], top_k: int = 3) -> list[Prediction]:
        """One Prediction per image, in order; an unreadable image fails alone, not its batch."""
        preds: list[Prediction] = []
        for i in range(0, len(images), self.batch_size):
            batch: dict[int, Prediction] = {}
            blobs: dict[int, bytes] = {}
            for j, name in enumerate(images[i : i + self.batch_size]):
                batch[j] = Prediction(name)
                try:
                    blobs[j] = Path(name).read_bytes()
                except OSError as e:
                    batch[j].error = f"{type(e).__name__}: {e.strerror or e}"
            try:
                answers = self._call(list(blobs.values()), top_k) if blobs else []
                for j, (labels, scores) in zip(blobs, answers, strict=True):
                    batch[j].labels, batch[j].scores = labels, scores
            except self.tf.errors.InvalidArgumentError:
                for j, blob in blobs.items():  # one at a time: find the image(s) it refused
                    try:
                        ((batch[j].labels, batch[j].scores),) = self._call([blob], top_k)
                    except self.tf.errors.InvalidArgumentError:
                        batch[j].error = "not a decodable image"
            preds += [batch[j] for j in sorted(batch)]
        return preds


def write_csv(preds: list[Prediction], path: str, top_k: int) -> None:
    """Write predictions as CSV, so a batch run can be read by other tools.

    One row per image: image, label_1, score_1, ..., label_k, score_k, error.

    Args:
        preds: the predictions, one per image.
        path: the CSV file to write.
        top_k: label/score column pairs per row.
    """
    header = ["image"]
    for k in range(1, top_k + 1):
        header += [f"label_{k}", f"score_{k}"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([*header, "error"])
        for p in preds:
            row = [p.image]
            for k in range(top_k):
                if k < len(p.labels):
                    row += [p.labels[k], f"{p.scores[k]:.6f}"]
                else:
                    row += ["", ""]
            w.writerow([*row, p.error or ""])


def print_table(preds: list[Prediction], title: str, top_k: int) -> None:
    """A rich table on stdout; long file names wrap rather than being cut with an ellipsis.

    Args:
        preds: the predictions, one per image.
        title: the table's title.
        top_k: labels (with scores) shown per image.
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    t = Table(title=title)
    t.add_column("image", overflow="fold")
    for k in range(top_k):
        t.add_column(f"#{k + 1}", overflow="fold")
    for p in preds:
        if p.error:  # Text: a name or label with [brackets] is not rich markup
            t.add_row(Text(p.image), Text(p.error, style="red"), *[""] * (top_k - 1))
        else:
            cells = [Text(f"{lab} {s:.3f}") for lab, s in zip(p.labels, p.scores, strict=True)]
            t.add_row(Text(p.image), *cells, *[""] * (top_k - len(cells)))
    Console().print(t)
