"""Path helpers shared by steps that read or write local paths and tf.io.gfile URLs alike."""

from __future__ import annotations

import os

__all__ = ["demo_weights", "image_files", "is_output_dir", "is_remote", "join", "mark_output_dir"]


def demo_weights() -> str:
    """The synthetic demo base shipped inside the package (base.weights: demo).

    Returns:
        The path of graft/assets/demo_base.weights.h5 where Graft is installed.
    """
    from importlib.resources import files

    return str(files("graft") / "assets" / "demo_base.weights.h5")


def is_remote(path: str) -> bool:
    """gs://, s3://, hdfs:// ... (anything tf.io.gfile handles that os does not).

    Args:
        path: a path or URL.

    Returns:
        True for a URL with a scheme.
    """
    return "://" in path


def join(*parts: str) -> str:
    """Join path parts with "/" for a URL, with os.path.join for a local path.

    Args:
        *parts: the parts; the first decides whether the path is remote.

    Returns:
        The joined path.
    """
    return "/".join(p.rstrip("/") for p in parts) if is_remote(parts[0]) else os.path.join(*parts)


# Graft writes this file into every folder it owns (run root, feature store, push destination),
# so that ingest never reads them as data wherever they sit: `cd ROOT && graft train .` puts
# runs/ and models/ inside the image folder, beside the class folders.
OUTPUT_MARKER = ".graft-output"


def mark_output_dir(path: str) -> None:
    """Create a local folder Graft writes to and mark it as Graft's own (never data).

    Args:
        path: the folder; a URL is left alone.
    """
    if not path or is_remote(path):
        return
    os.makedirs(path, exist_ok=True)
    marker = os.path.join(path, OUTPUT_MARKER)
    if not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write("Graft's own output (runs, feature store or models): never read as data.\n")


def is_output_dir(path: str) -> bool:
    """Whether a folder is one Graft wrote (runs, models, the feature store), so
    ingest never reads it as data.

    Args:
        path: a folder.

    Returns:
        True when it is local and holds the OUTPUT_MARKER file.
    """
    return not is_remote(path) and os.path.isfile(os.path.join(path, OUTPUT_MARKER))


# What `graft predict` picks up when it walks a folder (ingest itself reads any file and lets
# the decoder decide; a prediction run over a folder should skip notes, CSVs and the like).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp")


def image_files(paths: list[str]) -> list[str]:
    """Files as given, folders walked recursively for image files, in a stable order.

    A named file is kept whatever its extension (the user asked for it); hidden files and
    folders inside a walked folder are skipped.

    Args:
        paths: files and folders.

    Returns:
        The image files.

    Raises:
        FileNotFoundError: a path that does not exist.
    """
    out: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            found = []
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found += [
                    os.path.join(root, f)
                    for f in sorted(files)
                    if not f.startswith(".") and f.lower().endswith(IMAGE_SUFFIXES)
                ]
            if not found:
                raise FileNotFoundError(
                    f"no image files ({', '.join(IMAGE_SUFFIXES)}) under the folder {p}"
                )
            out += found
        elif os.path.isfile(p):
            out.append(p)
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    return out
