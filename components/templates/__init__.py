"""The Jinja2 templates of the pages Graft writes (report.html, model_card.md), and their
environments: autoescape is on in both, so a label, path or reason from the data is always
text, never markup. A value that is markup already (a `Markup`) is left as it is.
"""

from __future__ import annotations

import re
from functools import cache

from jinja2 import Environment, PackageLoader, StrictUndefined, Template
from markupsafe import Markup, escape

__all__ = ["html_template", "markdown_template"]

_LOADER = PackageLoader("graft.components.templates", ".")  # the *.j2 beside this file
_WRAP_AFTER = re.compile(r"(?<=[^/])([/_.-])(?=.)")
# & and < are all that can start markup in Markdown; > is left readable (">= min_accuracy")
_MARKDOWN_SPECIAL = str.maketrans({"&": "&amp;", "<": "&lt;"})


def fmt(value: float, spec: str) -> str:
    """`format(value, spec)`, as a filter: `{{ x|fmt("+.3f") }}`.

    Args:
        value: a number.
        spec: a format spec, as in an f-string after the colon.

    Returns:
        The formatted text.
    """
    return format(value, spec)


def wrap_paths(text: str) -> Markup:
    """Text whose paths (and other long names) may wrap after a separator (/ _ - .) rather
    than mid-word, by a <wbr> there; words of prose are left alone.

    Args:
        text: plain text (escaped here).

    Returns:
        The escaped text with <wbr> after the separators of its long words.
    """
    out = []
    for word in re.split(r"(\s+)", str(text)):
        if "/" in word or len(word) > 30:
            word = _WRAP_AFTER.sub(lambda m: m.group(1) + "\0", word)
        out.append(escape(word).replace("\0", Markup("<wbr>")))
    return Markup("").join(out)


def code(value: object) -> Markup:
    """A Markdown code span of the value, fenced by more backticks than it holds: its text
    shows as it is (a code span's content needs no escaping).

    Args:
        value: any value; its str() is shown.

    Returns:
        The code span, as markup the template keeps.
    """
    text = str(value)
    fence = "`" * (1 + max((len(r) for r in re.findall(r"`+", text)), default=0))
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return Markup(f"{fence}{pad}{text}{pad}{fence}")


def table_cell(value: object) -> Markup:
    """A Markdown table cell's text: escaped, with `|` (which would end the cell) as `\\|`.

    Args:
        value: any value; its str() is shown.

    Returns:
        The cell text, as markup the template keeps.
    """
    return Markup(str(value).translate(_MARKDOWN_SPECIAL).replace("|", "\\|"))


def _markdown_text(value: object) -> object:
    """Markdown's escaping: & and < as entities (rendered back as the characters); quotes and >
    stay as they are, for whoever reads the .md as plain text."""
    if isinstance(value, Markup):
        return value
    return Markup(str(value).translate(_MARKDOWN_SPECIAL))


def _environment(**kw) -> Environment:
    env = Environment(
        loader=_LOADER,
        autoescape=True,
        undefined=StrictUndefined,  # a value the page needs and lacks fails, never shows blank
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        **kw,
    )
    env.filters.update(fmt=fmt, wrap_paths=wrap_paths, code=code, cell=table_cell)
    return env


@cache
def _html() -> Environment:
    return _environment()


@cache
def _markdown() -> Environment:
    return _environment(finalize=_markdown_text)


def html_template(name: str) -> Template:
    """An HTML template, escaped for HTML (&, <, >, quotes).

    Args:
        name: the template's file name in this package, e.g. "report.html.j2".

    Returns:
        The loaded template.
    """
    return _html().get_template(name)


def markdown_template(name: str) -> Template:
    """A Markdown template: values escaped for Markdown (& and <; quotes and > kept).

    Args:
        name: the template's file name in this package, e.g. "model_card.md.j2".

    Returns:
        The loaded template.
    """
    return _markdown().get_template(name)
