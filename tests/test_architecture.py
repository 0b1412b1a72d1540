"""The house rules that keep Graft easy to change: layers, no import cycles, the Step contract."""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
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
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
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
    for name in ("runner.py", "kubeflow.py", "kfp_runtime.py"):
        src = (REPO / "pipeline" / name).read_text()
        for step in dag.STEP_NAMES:
            assert f'"{step}"' not in src and f"'{step}'" not in src, f"{name} names step {step}"


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
