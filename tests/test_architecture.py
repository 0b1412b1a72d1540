"""The house rules that keep Graft easy to change: layers, no import cycles, the Step contract."""

from __future__ import annotations

import ast
import graphlib
import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO

from graft.core.config import parse_config
from graft.core.scope import ScopedConfig, UndeclaredConfigRead
from graft.pipeline import dag

# folder -> (package, the graft layers its modules may import besides their own)
LAYERS = {
    "core": ("graft.core", set()),
    "components": ("graft.components", {"graft.core"}),
    "serving": ("graft.serving", {"graft.core"}),
    "pipeline": ("graft.pipeline", {"graft.core", "graft.components", "graft.serving"}),
}


def _modules() -> dict[str, Path]:
    mods = {}
    for folder, (package, _) in LAYERS.items():
        for path in sorted((REPO / folder).glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            mods[name] = path
    return mods


def _imports(path: Path, known: set[str]) -> set[str]:
    """Every graft module a file imports, at the top or inside a function."""
    return _imports_in(path.read_text(), known)


def _imports_in(source: str, known: set[str]) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for n in names:
            while n and n not in known:
                n = n.rpartition(".")[0]
            if n.startswith("graft."):
                out.add(n)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(p, set(mods)) - {m} for m, p in mods.items()}


def _layer(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_imports_only_point_down():
    bad = []
    allowed = {package: ok | {package} for package, ok in LAYERS.values()}
    for module, deps in _graph().items():
        for dep in deps:
            if _layer(dep) not in allowed[_layer(module)]:
                bad.append(f"{module} imports {dep}")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    try:
        graphlib.TopologicalSorter(_graph()).prepare()
    except graphlib.CycleError as e:
        pytest.fail(f"import cycle: {' -> '.join(e.args[1])}")


def test_the_graph_sees_lazy_imports():
    """The checks above are only as good as the parser: a function-level import counts."""
    graph = _graph()
    assert "graft.components.ingest" in graph["graft.pipeline.dag"]  # imported inside adapters
    assert "graft.core.config" in graph["graft.components.train"]


# ------------------------------------------------- steps over a library (issue #33)


def _step_modules() -> dict[str, str]:
    """Step name -> the components module holding its work: the module its dag adapter
    (`Step.run`) imports. Derived from dag.STEPS, so a new step is covered as it is added."""
    known = set(_modules())
    out = {}
    for s in dag.STEPS:
        source = textwrap.dedent(inspect.getsource(s.run))
        mods = {m for m in _imports_in(source, known) if m.startswith("graft.components.")}
        assert len(mods) == 1, f"step {s.name}: its adapter imports {sorted(mods)}, not one module"
        out[s.name] = mods.pop()
    return out


def _climbs(graph: dict[str, set[str]], steps: set[str]) -> list[str]:
    """Imports of a step module from any other components module: a step importing another
    step, or a library module importing a step."""
    return sorted(
        f"{module} imports the step module {dep}"
        for module, deps in graph.items()
        if module.startswith("graft.components.")
        for dep in deps & steps
        if dep != module
    )


def test_steps_import_only_the_library_and_the_library_no_step():
    """A step module imports graft.core and the library modules of components, never another
    step; a library module (every components module that is no step's) never imports a step."""
    assert not _climbs(_graph(), set(_step_modules().values()))


def test_the_step_import_check_finds_a_planted_import():
    """Fed a step importing another step (and a library module importing a step), at the top
    or inside a function, the check above fails."""
    steps = _step_modules()
    assert {steps["train_head"], steps["fine_tune"]} == {"graft.components.train"}
    assert {"graft.components.evaluate", "graft.components.push"} <= set(steps.values())
    graph, known = _graph(), set(_modules())
    graph["graft.components.evaluate"] |= _imports_in(
        "def f():\n    from graft.components.train import fine_tune\n", known
    )
    graph["graft.components.stats"] |= _imports_in("from graft.components import push\n", known)
    assert _climbs(graph, set(steps.values())) == [
        "graft.components.evaluate imports the step module graft.components.train",
        "graft.components.stats imports the step module graft.components.push",
    ]


def test_no_generic_top_level_names_installed():
    names = ("pipeline", "components", "serving", "core")
    probe = f"import importlib.util as u; print([n for n in {names} if u.find_spec(n)])"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd="/", capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------ the Step contract


def test_a_read_outside_the_declared_sections_fails(tmp_path):
    cfg = parse_config({"data": {"path": str(tmp_path)}})
    view = ScopedConfig(cfg, ("data.image_size", "export"), "probe")
    assert view.data.image_size == 224 and view.export.model_name == "graft"
    with pytest.raises(UndeclaredConfigRead, match="probe.*'data.path'"):
        _ = view.data.path
    with pytest.raises(UndeclaredConfigRead, match="'train'"):
        _ = view.train
    assert view.reads == {"data.image_size", "export"}
    assert ScopedConfig(cfg, ("validate",)).validate_.min_classes == 2  # the YAML spelling counts


def test_runner_and_kubeflow_have_no_step_name_branches():
    for name in ("runner.py", "kubeflow.py", "kfp_runtime.py", "kfp_components.py"):
        src = (REPO / "pipeline" / name).read_text()
        for step in dag.STEP_NAMES:
            assert f'"{step}"' not in src and f"'{step}'" not in src, f"{name} names step {step}"


def _step_words() -> set[str]:
    """Step names and the names steps give their inputs (and the outputs they only show)."""
    return set(dag.STEP_NAMES) | {name for s in dag.STEPS for name in {**s.inputs, **s.shows}}


def _compares_with_step_words(tree: ast.AST) -> list[str]:
    words, bad = _step_words(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
        elif isinstance(node, ast.MatchValue):
            sides = [node.value]
        else:
            continue
        hits = {c.value for c in sides if isinstance(c, ast.Constant)} & words
        if hits:
            bad.append(f"{node.lineno} compares with {sorted(hits)}")
    return bad


def _lists_of_steps(tree: ast.AST) -> list[str]:
    # __all__ names a module's functions (train's train_head and fine_tune), not the steps
    exports = {
        id(n.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in n.targets)
    }
    bad = []
    for node in ast.walk(tree):
        if id(node) in exports:
            continue
        if isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)):
            elts = node.keys if isinstance(node, ast.Dict) else node.elts
            names = {e.value for e in elts if isinstance(e, ast.Constant)} & set(dag.STEP_NAMES)
            if len(names) >= 2:
                bad.append(f"{node.lineno} lists {sorted(names)}")
    return bad


def test_no_module_branches_on_a_step_or_input_name():
    """What a step does differently is declared on its Step (plan_from, when, shows...): no
    comparison anywhere, dag.py included, asks which step or which input it is."""
    bad = [
        f"{module}:{hit}"
        for module, path in _modules().items()
        for hit in _compares_with_step_words(ast.parse(path.read_text()))
    ]
    assert not bad, "\n".join(bad)


def test_only_the_dag_lists_the_steps():
    """A second list of the steps (a tuple in the config, a dict of wrappers) drifts from the
    DAG: outside dag.py no literal holds two step names."""
    bad = [
        f"{module}:{hit}"
        for module, path in _modules().items()
        if module != "graft.pipeline.dag"
        for hit in _lists_of_steps(ast.parse(path.read_text()))
    ]
    assert not bad, "\n".join(bad)


def test_the_step_name_checks_find_the_old_shapes():
    """The checks above are only as good as their walk: fed what they forbid, they find it."""
    old = ast.parse(
        'if "advice" in s.inputs: pass\n'
        "match name:\n    case 'push': pass\n"
        'RESOURCES = {"ingest": 1, "train_head": 2}\n'
        'STEP_NAMES = ("ingest", "validate")\n'
    )
    assert len(_compares_with_step_words(old)) == 2
    assert len(_lists_of_steps(old)) == 2
    assert {"graft.core.config", "graft.pipeline.kfp_components"} <= set(_modules())


def test_plan_from_names_an_input_from_the_step_that_plans():
    planners = {s.inputs[s.plan_from] for s in dag.STEPS if s.plan_from}
    assert len(planners) == 1, planners  # one step plans; the others apply its plan
    for s in dag.STEPS:
        assert s.plan_from is None or s.plan_from in s.inputs, s.name


@pytest.mark.slow
def test_each_step_reads_exactly_its_declared_sections(pipeline_run):
    """Every step ran under the scoped view (a read outside would have failed the run), and each
    declared section is really read: an unread one would cost needless cache misses."""
    _, run, _ = pipeline_run
    for s in dag.STEPS:
        rec = run["steps"][s.name]
        assert rec["status"] == "ran", (s.name, rec["status"])
        reads = rec["config_read"]
        forced_by = s.when.forced_by if s.when else None  # read by the runner, for the step
        for section in (x for x in s.sections if x != forced_by):
            assert any(r == section or r.startswith(section + ".") for r in reads), (
                f"{s.name} declares {section} but never read it: {reads}"
            )


MAX_FUNCTION_LINES = 80  # fits on a screen (issue #33)
# Functions still over it, to be split: the list only shrinks (a stale entry fails too).
LONG_FUNCTIONS_LEFT: set[str] = set()  # none left: a new long function fails the test


def _code_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """A function's lines less its docstring: the Args/Returns docstrings #33 asks for must not
    push a function over the limit that its code fits."""
    first = fn.body[0]
    has_doc = ast.get_docstring(fn, clean=False) is not None
    return fn.end_lineno - fn.lineno + 1 - ((first.end_lineno - first.lineno + 1) if has_doc else 0)


def _long_functions() -> set[str]:
    """`folder/file.py:name` of every function in the layers longer than MAX_FUNCTION_LINES."""
    out = set()
    for folder in LAYERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    if _code_lines(node) > MAX_FUNCTION_LINES:
                        out.add(f"{path.relative_to(REPO).as_posix()}:{node.name}")
    return out


def test_functions_fit_on_a_screen():
    long = _long_functions()
    too_long, now_short = sorted(long - LONG_FUNCTIONS_LEFT), sorted(LONG_FUNCTIONS_LEFT - long)
    assert not too_long, f"over {MAX_FUNCTION_LINES} lines, split them: {too_long}"
    assert not now_short, f"short enough now, drop them from LONG_FUNCTIONS_LEFT: {now_short}"


def test_the_length_check_counts_code_not_docstrings():
    """A long docstring alone does not make a function long; 81 lines of code do."""
    doc = '    """Why.\n\n' + "    Args:\n        x: an argument.\n" * 60 + '    """\n'
    short = ast.parse("def f(x):\n" + doc + "    return x\n").body[0]
    long = ast.parse("def g(x):\n" + doc + "    x += 1\n" * 80 + "    return x\n").body[0]
    assert _code_lines(short) == 2
    assert _code_lines(long) == 82 > MAX_FUNCTION_LINES
