"""Which directory names under a model base path are versions (for serving, and for
anything that lists or publishes versions: one rule).

A version is a decimal number from 1 to 2**63 - 1 written without leading zeros: TF Serving's
version numbers are int64, and gRPC's ModelSpec.version cannot carry more. TF Serving reads
`007` as version 7; Graft ignores such a name (with one warning) so that `7` and `007` can
never both claim version 7, and a version's path is always its number.
"""

from __future__ import annotations

import re

__all__ = ["INT64_MAX", "version_number", "why_not_a_version"]


INT64_MAX = 2**63 - 1
_VERSION = re.compile(r"[1-9][0-9]{0,18}")


def version_number(name: str) -> int | None:
    """The version a directory name stands for, as TF Serving reads it.

    Args:
        name: a directory name under a model's base path.

    Returns:
        The version (1 to INT64_MAX), or None when the name is not one.
    """
    name = name.rstrip("/")
    if not _VERSION.fullmatch(name):
        return None
    number = int(name)
    return number if number <= INT64_MAX else None


def why_not_a_version(name: str) -> str | None:
    """Why an all-digit directory name is not a version, for the warning.

    Args:
        name: a directory name under a model's base path.

    Returns:
        The reason, or None when the name is a version or not all digits.
    """
    name = name.rstrip("/")
    if not name.isascii() or not name.isdigit() or version_number(name) is not None:
        return None
    if int(name) == 0:
        return "version numbers start at 1"
    if name.startswith("0"):
        return f"a version number has no leading zeros (rename it to {int(name)})"
    return f"over the largest version number, {INT64_MAX:,} (int64)"
