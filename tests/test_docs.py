"""The docs stay true to the repo: size, links, make targets, commands and config defaults.

Fast and TensorFlow-free: reads README.md and benchmarks/README.md as text; the config and CLI
checks import only graft.core.config and graft.pipeline.cli's argparse parser.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest
import yaml
from conftest import REPO

README = REPO / "README.md"
BENCH_README = REPO / "benchmarks" / "README.md"
CONFIG_DOC = REPO / "docs" / "config.md"
DOCS = [README, BENCH_README, *sorted((REPO / "docs").glob("*.md"))]
README_LIMIT = 14 * 1024  # bytes

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _prose(text: str) -> str:
    """The text outside fenced code blocks."""
    return FENCE.sub("", text)


def test_readme_is_short():
    size = README.stat().st_size
    assert size < README_LIMIT, f"README.md is {size} bytes; keep it under {README_LIMIT}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_exist(doc: Path):
    missing = []
    for target in LINK.findall(_prose(_text(doc))):
        if target.startswith(("http://", "https://", "mailto:", "#")):
            continue
        path = target.split("#", 1)[0]
        if path and not (doc.parent / path).exists():
            missing.append(target)
    assert not missing, f"{doc.name} links to missing files: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_no_references_outside_the_repo(doc: Path):
    text = _text(doc)
    for banned in ("../shared", "DESIGN.md"):
        assert banned not in text, f"{doc.name} mentions {banned}"


def _make_targets() -> set[str]:
    makefile = _text(REPO / "Makefile")
    return set(re.findall(r"^([A-Za-z0-9][\w.-]*)\s*:(?!=)", makefile, re.M))


def test_make_targets_in_readme_exist():
    mentioned = set(re.findall(r"\bmake ([a-z][\w-]*)", _text(README)))
    assert mentioned, "README.md mentions no make targets"
    missing = sorted(mentioned - _make_targets())
    assert not missing, f"README.md mentions make targets the Makefile lacks: {missing}"


def _command_lines(text: str) -> list[list[str]]:
    """`graft ...` invocations (bash blocks and inline code), as argv lists after `graft`."""
    lines = [f"graft {c}" for c in re.findall(r"`graft ([^`]+)`", _prose(text))]
    for lang, body in FENCE.findall(text):
        if lang in ("bash", "sh", ""):
            lines += body.replace("\\\n", " ").splitlines()
    out = []
    for line in lines:
        for part in re.split(r"&&|\|\||;", line):
            try:
                argv = shlex.split(part, comments=True)
            except ValueError:
                continue
            if argv and Path(argv[0]).name == "graft":
                out.append(argv[1:])
    return out


def _is_config_key(dotted: str) -> bool:
    from pydantic import BaseModel

    from graft.core.config import GraftConfig

    model: type[BaseModel] | None = GraftConfig
    for part in dotted.split("."):
        if model is None:
            return True  # inside a free-form dict such as base.kwargs
        field = next((f for n, f in model.model_fields.items() if part in (n, f.alias)), None)
        if field is None:
            return False
        ann = field.annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return True


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_graft_commands_and_flags_exist(doc: Path):
    from graft.pipeline.cli import build_parser

    bad = []
    for argv in _command_lines(_text(doc)):
        parser, words = build_parser(), []
        for token in argv:
            subs = _subparsers(parser)
            if not subs or token.startswith("-"):
                break
            if token not in subs:
                bad.append(f"graft {' '.join(words + [token])}: no such command")
                break
            parser, words = subs[token], [*words, token]
        options = {o for a in parser._actions for o in a.option_strings}
        for token, value in zip(argv, [*argv[1:], ""], strict=True):
            flag = token.split("=", 1)[0]
            if flag.startswith("--") and flag not in options:
                bad.append(f"graft {' '.join(words)}: no option {flag}")
            if flag == "--set" and not _is_config_key(value.split("=", 1)[0]):
                bad.append(f"graft {' '.join(words)}: --set {value}: no such config key")
    assert not bad, "\n".join(bad)


def _leaves(node, prefix: str = "") -> set[str]:
    if isinstance(node, dict) and node:
        return set().union(*(_leaves(v, f"{prefix}{k}.") for k, v in node.items()))
    return {prefix.rstrip(".")}


def test_config_reference_matches_the_defaults():
    """docs/config.md's YAML block of defaults is GraftConfig's defaults, key for key."""
    from graft.core.config import parse_config

    section = _text(CONFIG_DOC).split("# Config reference", 1)[1]
    block = next(body for lang, body in FENCE.findall(section) if lang == "yaml")
    documented = yaml.safe_load(block)
    documented["data"]["path"] = "images"
    want = parse_config({"data": {"path": "images"}}).to_dict()
    got = parse_config(documented).to_dict()
    assert got == want, "docs/config.md config reference differs from core/config.py defaults"
    want_keys = _leaves({k: v for k, v in want.items() if k != "kubeflow"})
    want_keys |= {k for k in _leaves(want["kubeflow"], "kubeflow.") if ".resources." not in k}
    want_keys |= {"kubeflow.resources"}
    doc_keys = {k for k in _leaves(documented) if k}
    # a dict-valued default written inline, e.g. splits: {train: 0.7, ...}, expands the same way
    assert want_keys - doc_keys == set(), f"undocumented keys: {sorted(want_keys - doc_keys)}"
