"""The docs stay true to the repo: size, links, make targets, commands and config defaults.

Fast and TensorFlow-free: reads README.md and benchmarks/README.md as text; the config and CLI
checks import only graft.core.config and graft.pipeline.cli's argparse parser.
"""

from __future__ import annotations

import argparse
import ast
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


# ------------------------------------------------------------------ the API: __all__ and docstrings

# The layers whose modules name their public API in __all__, with Args/Returns docstrings on its
# functions (keras-hub's style). All of graft.components is covered, the steps included (#33);
# NOT_YET_API can leave a module out while it is being split.
API_PACKAGES = {
    "core": "graft.core",
    "components": "graft.components",
    "serving": "graft.serving",
    "pipeline": "graft.pipeline",
}
API_ROOT_MODULES = [REPO / "graft" / "__init__.py"]
NOT_YET_API: set[str] = set()


def _api_files(folder: str) -> list[Path]:
    """A package's modules the API checks cover: all but NOT_YET_API, its __init__.py and its
    subpackages' (components/templates) included."""
    paths = sorted((REPO / folder).glob("*.py")) + sorted((REPO / folder).glob("*/__init__.py"))
    return [p for p in paths if p.relative_to(REPO).as_posix() not in NOT_YET_API]


def _dotted(path: Path) -> str:
    """components/fs.py -> graft.components.fs; components/templates/__init__.py -> ...templates."""
    folder, *rest = path.relative_to(REPO).with_suffix("").parts
    return ".".join([API_PACKAGES[folder], *(r for r in rest if r != "__init__")])


def _api_modules() -> list[Path]:
    """The public modules of API_PACKAGES (not _private.py; __init__.py is the package's)."""
    mods = list(API_ROOT_MODULES)
    for folder in API_PACKAGES:
        mods += [p for p in _api_files(folder) if p.stem == "__init__" or p.stem[0] != "_"]
    return mods


def _module_all(tree: ast.Module) -> list[str] | None:
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", 0)]
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            return list(ast.literal_eval(node.value))
    return None


def _top_level(tree: ast.Module) -> dict[str, ast.AST]:
    """Every name a module's top level binds (defs, classes, assignments, imports), by name."""
    names: dict[str, ast.AST] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.setdefault(node.name, node)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for a in node.names:
                names.setdefault((a.asname or a.name).split(".")[0], node)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.setdefault(node.id, node)
    top = {getattr(n, "name", None) for n in tree.body}
    # defs nested in functions or classes are not the module's; assignments in if/try are
    return {k: v for k, v in names.items() if not hasattr(v, "body") or k in top}


def _returns_a_value(fn: ast.FunctionDef) -> bool:
    """Annotated: not -> None; else a `return <value>` in its own body (not a nested def's)."""
    if fn.returns is not None:
        return not (isinstance(fn.returns, ast.Constant) and fn.returns.value is None)
    todo, found = list(fn.body), False
    while todo:
        node = todo.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            continue
        if isinstance(node, ast.Return) and node.value is not None:
            found = not (isinstance(node.value, ast.Constant) and node.value.value is None)
            if found:
                break
        todo.extend(ast.iter_child_nodes(node))
    return found


def _takes_arguments(fn: ast.FunctionDef) -> bool:
    a = fn.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
    return bool([n for n in names if n not in ("self", "cls")] or a.vararg or a.kwarg)


def _docstring_problems(path: Path) -> list[str]:
    """What the module's __all__ and its functions' docstrings lack, as `file: problem` lines."""
    rel = path.relative_to(REPO)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    public = _module_all(tree)
    if public is None:
        return [f"{rel}: no __all__"]
    defined = _top_level(tree)
    problems = [
        f"{rel}: __all__ names {n!r}, which it does not define" for n in public if n not in defined
    ]
    for name in public:
        node = defined.get(name)
        if isinstance(node, ast.ClassDef) and not ast.get_docstring(node):
            problems.append(f"{rel}:{name}: no docstring")
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        doc = ast.get_docstring(node) or ""
        if not doc:
            problems.append(f"{rel}:{name}: no docstring")
        if _takes_arguments(node) and "\nArgs:\n" not in doc:
            problems.append(f"{rel}:{name}: takes arguments, its docstring has no Args:")
        if _returns_a_value(node) and not re.search(r"\n(Returns|Yields):\n", doc):
            problems.append(f"{rel}:{name}: returns a value, its docstring has no Returns:")
    return problems


def _imported_from(modules: dict[str, Path]) -> dict[str, set[str]]:
    """The names other files of the repo import from each module (`from m import x`, or
    `from pkg import m` then `m.x`), by dotted module name."""
    used: dict[str, set[str]] = {m: set() for m in modules}
    for path in REPO.rglob("*.py"):
        if ".venv" in path.parts or "build" in path.parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        alias: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in modules:
                if modules[node.module] != path:
                    used[node.module] |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                for a in node.names:
                    if f"{node.module}.{a.name}" in modules:
                        alias[a.asname or a.name] = f"{node.module}.{a.name}"
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in alias
                and modules[alias[node.value.id]] != path
            ):
                used[alias[node.value.id]].add(node.attr)
    return used


def test_every_api_module_names_its_public_api_with_docstrings():
    """Each module of API_PACKAGES has __all__, naming only what it defines; each function in
    it has a docstring with Args: (when it takes arguments) and Returns: (when it returns a
    value); each class in it, a docstring."""
    problems = [p for path in _api_modules() for p in _docstring_problems(path)]
    assert not problems, "\n".join(problems)


def test_what_other_modules_import_is_in_all():
    """__all__ is the API others use: a public name imported from an API module is in it."""
    modules = {
        _dotted(p): p
        for folder in API_PACKAGES
        for p in _api_files(folder)
        if p != REPO / folder / "__init__.py"
    }
    missing = []
    for name, names in _imported_from(modules).items():
        public = _module_all(ast.parse(modules[name].read_text(encoding="utf-8"))) or []
        missing += [
            f"{name}.{n}" for n in sorted(names) if not n.startswith("_") and n not in public
        ]
    assert not missing, f"imported from outside, not in __all__: {missing}"


def test_the_modules_left_out_exist():
    """NOT_YET_API names real modules, so a renamed or split step cannot hide behind it."""
    gone = sorted(p for p in NOT_YET_API if not (REPO / p).is_file())
    assert not gone, f"NOT_YET_API names modules that do not exist: {gone}"


def test_the_api_checks_find_what_is_missing(tmp_path):
    """The checks above can fail: a module without __all__, a name it lacks, bare docstrings."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        '__all__ = ["f", "g", "C", "gone"]\n'
        "def f(x):\n    '''Why.'''\n    return x\n"
        "def g():\n    '''Why.\n\n    Returns:\n        one.\n    '''\n    return 1\n"
        "class C:\n    pass\n"
    )
    global REPO
    saved, REPO = REPO, tmp_path  # _docstring_problems names files relative to REPO
    try:
        problems = _docstring_problems(bad)
        (tmp_path / "none.py").write_text("x = 1\n")
        problems += _docstring_problems(tmp_path / "none.py")
    finally:
        REPO = saved
    assert problems == [
        "bad.py: __all__ names 'gone', which it does not define",
        "bad.py:f: takes arguments, its docstring has no Args:",
        "bad.py:f: returns a value, its docstring has no Returns:",
        "bad.py:C: no docstring",
        "none.py: no __all__",
    ]
