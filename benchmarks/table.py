"""The table of current figures in benchmarks/README.md, generated from benchmarks/results/*.json.

    python -m benchmarks.table          # rewrite the table between the README's two markers
    python -m benchmarks.table --check  # exit 1 when the README's table is not the generated one

Every result file gets one row, read generically so that a new file needs no code here:
`value` / `baseline` / `ratio` / `unit` (what benchmarks.common.report writes) and any other
top-level `*ratio*` figure; the `goal`, judged met or not where the JSON says so (`goals_met`,
`goal_met`) or where a goal clause compares a recorded field (`overhead_ratio <= 2.0`; a goal
with one comparison and no such field is the headline ratio's, as report() states it);
accuracies with their 95% interval and n where recorded; date and machine. Files that predate
report()'s fields name their headline figures in HEADLINES. No TensorFlow: tests run it.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import operator
import re
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
README = BENCH / "README.md"
START = "<!-- table:start (python -m benchmarks.table writes this; do not edit by hand) -->"
END = "<!-- table:end -->"

# result files without report()'s value/baseline: the fields that carry their headline
HEADLINES = {
    "guard_cv": ("rows[].interval_narrowing", "rows[].cv_cost", "rows[].cv_agrees_with_test"),
    "layouts": (
        "chest_xray_group_by.patients_in_two_splits_per_image_split",
        "chest_xray_group_by.patients_in_two_splits_group_by",
        "near_duplicates_*.flagged_pairs",
        "near_duplicates_*.pairs_compared",
    ),
}
LABEL_KEYS = ("dataset", "recipe", "variant")  # what names one entry of a list of results
N_KEYS = ("test_n", "test_images", "n")
ACCURACY_KEYS = ("test_accuracy", "accuracy")  # the ones ci_low / ci_high belong to
MAX_FALLBACK_FIGURES = 4
OPS = {"<=": operator.le, ">=": operator.ge, "==": operator.eq, "<": operator.lt, ">": operator.gt}
COMPARISON = re.compile(r"(?:\b([A-Za-z_]\w*)\s*)?(<=|>=|==|<|>)\s*(-?\d+(?:\.\d+)?)(%?)")
HEADER = (
    "benchmark",
    "figures (value vs baseline: ratio)",
    "goal",
    "met",
    "accuracy [95%] n",
    "date",
    "machine",
)


def _num(x) -> str:
    if isinstance(x, bool):
        return str(x).lower()
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def _is_number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _label(entry: dict) -> str:
    return " ".join(str(entry[k]) for k in LABEL_KEYS if isinstance(entry.get(k), str))


def _resolve(node, parts: list[str], label: str = "") -> list[tuple[str, object]]:
    """(label, value) for a dotted path; `key[]` walks a list, `*` in a key globs dict keys."""
    if not parts:
        return [(label, node)]
    head, rest = parts[0], parts[1:]
    if head.endswith("[]"):
        items = node.get(head[:-2], []) if isinstance(node, dict) else []
        return [
            hit
            for i, e in enumerate(items)
            for hit in _resolve(e, rest, " ".join(filter(None, [label, _label(e) or str(i)])))
        ]
    if not isinstance(node, dict):
        return []
    keys = fnmatch.filter(node, head) if "*" in head else [head] if head in node else []
    return [  # a key on the way labels what is found under it; the last one names the figure
        hit
        for k in keys
        for hit in _resolve(node[k], rest, " ".join(filter(None, [label, k if rest else ""])))
    ]


def _grouped(hits: list[tuple[str, str, object]], sep: str = " ") -> str:
    """'label: key value, key value; label: ...' in the order the labels first appear."""
    groups: dict[str, list[str]] = {}
    for label, key, value in hits:
        groups.setdefault(label, []).append(f"{key}{sep}{_num(value)}")
    return "; ".join(f"{lab}: {', '.join(v)}" if lab else ", ".join(v) for lab, v in groups.items())


def figures(name: str, data: dict) -> str:
    """The headline: value against its baseline and the ratio, then every other ratio."""
    hits: list[tuple[str, str, object]] = []
    if name in HEADLINES:
        for path in HEADLINES[name]:
            key = path.rsplit(".", 1)[-1]
            hits += [(lab, key, v) for lab, v in _resolve(data, path.split("."))]
        return _grouped(hits)
    parts = []
    if _is_number(data.get("value")) and _is_number(data.get("baseline")):
        unit = re.split(r"[(,]", str(data.get("unit", "")), maxsplit=1)[0].strip()
        ratio = f": ratio {_num(data['ratio'])}" if _is_number(data.get("ratio")) else ""
        parts.append(f"{_num(data['value'])} {unit} vs {_num(data['baseline'])}{ratio}")
    hits += [("", k, v) for k, v in data.items() if "ratio" in k and k != "ratio" and _is_number(v)]
    for items in data.values():
        if isinstance(items, list) and all(isinstance(e, dict) for e in items):
            hits += [
                (_label(e) or str(i), k, v)
                for i, e in enumerate(items)
                for k, v in e.items()
                if "ratio" in k and _is_number(v)
            ]
    if not parts and not hits:
        hits = [
            ("", k, v)
            for k, v in data.items()
            if _is_number(v) and "accuracy" not in k and k not in ("value", "baseline")
        ][:MAX_FALLBACK_FIGURES]
    return "; ".join(filter(None, [*parts, _grouped(hits)]))


def _explicit_met(node, label: str = "") -> list[tuple[str, str, bool]]:
    """(label, goal, met) from every `goals_met` dict and `goal_met` flag in the JSON."""
    found = []
    if isinstance(node, dict):
        if isinstance(node.get("goals_met"), dict):
            found += [(label, g, bool(m)) for g, m in node["goals_met"].items()]
        if isinstance(node.get("goal_met"), bool):
            found.append((label, "goal", node["goal_met"]))
        for k, v in node.items():
            if k != "goals_met":
                found += _explicit_met(v, label)
    elif isinstance(node, list):
        for i, e in enumerate(node):
            entry = _label(e) if isinstance(e, dict) else ""
            found += _explicit_met(e, " ".join(filter(None, [label, entry or str(i)])))
    return found


CLAUSE_END = re.compile(r";|,(?!\d{3}\b)|\band\b")  # not 1,000's comma


def _clauses(goal: str) -> list[str]:
    """The goal's clauses: split at ';', ',' and 'and' outside parentheses."""
    out, depth, start = [], 0, 0
    for m in re.finditer(r"\(|\)|" + CLAUSE_END.pattern, goal):
        depth += {"(": 1, ")": -1}.get(m.group(), 0)
        if m.group() not in "()" and depth == 0:
            out.append(goal[start : m.start()])
            start = m.end()
    return out + [goal[start:]]


def _judged_goal(data: dict) -> tuple[list[tuple[str, str, bool]], int]:
    """The goal's comparisons that name a recorded field, judged; and how many of its clauses
    could not be (one in words, "drift_false_positives 0 of 20", counts too)."""
    goal = str(data.get("goal", ""))
    alone = len(COMPARISON.findall(goal)) == 1  # a lone comparison may be the headline ratio's
    judged, unjudged = [], 0
    for clause in _clauses(goal):
        found, comparisons = [], list(COMPARISON.finditer(clause))
        for m in comparisons:
            field, op, limit, percent = m.groups()
            if not _is_number(data.get(field)):
                field = "ratio" if alone and _is_number(data.get("ratio")) else None
            if field is None:
                continue
            bound = float(limit) / (100 if percent else 1)
            actual, text = data[field], f"{field} {op} {limit}{percent}"
            ok = OPS[op](actual, bound)
            found.append(("", text if ok else f"{text} ({_num(actual)})", ok))
        judged += found
        # every comparison not judged, and a clause in words ("0 of 20") as one
        unjudged += len(comparisons) - len(found) if comparisons else clause.strip() != ""
    return judged, unjudged


def met(data: dict) -> str:
    """yes / **no** per goal, where the JSON records it or a goal clause names a field."""
    found, unjudged = _explicit_met(data), 0
    if not found:
        found, unjudged = _judged_goal(data)
    if not found:
        return "not recorded"
    verdicts = [(lab, goal, "yes" if ok else "**no**") for lab, goal, ok in found]
    return _grouped(verdicts, sep=": ") + (f"; {unjudged} more not judged" if unjudged else "")


def _interval(node: dict, key: str):
    if key in ACCURACY_KEYS and _is_number(node.get("ci_low")) and _is_number(node.get("ci_high")):
        return node["ci_low"], node["ci_high"]
    for candidate in (node.get(f"{key}_interval"), node.get("interval")):
        if isinstance(candidate, list) and len(candidate) == 2:
            return tuple(candidate)
    return None


def _is_entry_mapping(node) -> bool:
    """A dict of dicts keyed by what names them ({"float32": {...}, "int8": {...}})."""
    return isinstance(node, dict) and bool(node) and all(isinstance(v, dict) for v in node.values())


def _accuracies(node, label: str, n, lists: int) -> list[tuple[str, float, tuple | None, object]]:
    """(label, accuracy, interval, n) for every `*accuracy*` number, outside lists in lists."""
    out = []
    if isinstance(node, list):
        if lists >= 1:
            return []  # a list inside a list holds detail (folds of a row), not a headline
        for i, e in enumerate(node):
            entry = _label(e) if isinstance(e, dict) else ""
            out += _accuracies(e, " ".join(filter(None, [label, entry or str(i)])), n, lists + 1)
        return out
    if not isinstance(node, dict):
        return out
    n = next((node[k] for k in N_KEYS if _is_number(node.get(k))), n)
    for key, value in node.items():
        if "accuracy" in key and _is_number(value):
            name = key.replace("test_accuracy", "").replace("accuracy", "").strip("_")
            out.append((" ".join(filter(None, [label, name])), value, _interval(node, key), n))
        elif isinstance(value, dict | list):
            # a list's or an entry mapping's name (runs, variants) is no label: its entries have one
            named = isinstance(value, list) or _is_entry_mapping(value)
            child = label if named else " ".join(filter(None, [label, key]))
            out += _accuracies(value, child, n, lists)
    return out


def accuracy(data: dict) -> str:
    """Accuracies with interval and n, by label; only those with an interval if some have one."""
    found = sorted(_accuracies(data, "", None, 0), key=lambda f: f[0])
    if any(interval for _, _, interval, _ in found):
        found = [f for f in found if f[2]]
    cells = []
    for label, value, interval, n in found:
        ci = f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""
        cells.append(f"{label} {value:.3f}{ci}{f' n {n}' if n is not None else ''}".strip())
    return "; ".join(cells) or "—"


def _strings(node, keys: tuple[str, ...]) -> list[str]:
    if isinstance(node, dict):
        own = [str(node[k]) for k in keys if isinstance(node.get(k), str)]
        return own + [s for v in node.values() for s in _strings(v, keys)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v, keys)]
    return []


def dates(data: dict) -> str:
    days = sorted({d[:10] for d in _strings(data, ("date", "date_time"))})
    return " – ".join(dict.fromkeys([days[0], days[-1]])) if days else "not recorded"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _load(path: Path) -> dict:
    """A result file as a dict (a bare list becomes {"results": [...]}); bad JSON names the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SystemExit(f"{path}: not valid JSON ({e})") from e
    return data if isinstance(data, dict) else {"results": data}


def table(results: Path | None = None) -> str:
    """The markdown table, one row per results/*.json, and the machines' legend under it."""
    results = results or RESULTS
    machines: dict[str, str] = {}
    rows = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for path in sorted(results.glob("*.json")):
        data = _load(path)
        name = str(data.get("name") or path.stem)
        found = dict.fromkeys(_strings(data, ("machine",)))  # a file's rows may name several
        tags = [machines.setdefault(m, f"M{len(machines) + 1}") for m in found]
        machine = ", ".join(tags) or "—"
        cells = [
            f"[{name}](results/{path.name})",
            figures(path.stem, data) or "—",
            str(data.get("goal") or "—"),
            met(data),
            accuracy(data),
            dates(data),
            machine,
        ]
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    legend = "; ".join(f"{tag}: {m}" for m, tag in machines.items())
    return "\n".join(rows) + (f"\n\nMachines: {legend}." if legend else "")


def render(readme: str, results: Path | None = None) -> str:
    """The README with the text between the markers replaced by the generated table."""
    if readme.count(START) != 1 or readme.count(END) != 1:
        raise SystemExit(f"{README.name} needs exactly one {START!r} and one {END!r}")
    head, rest = readme.split(START)
    _, tail = rest.split(END)
    return f"{head}{START}\n{table(results)}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the README's table is stale")
    args = ap.parse_args(argv)
    current = README.read_text(encoding="utf-8")
    fresh = render(current)
    if args.check:
        if fresh != current:
            print(f"{README}: the table is stale; run python -m benchmarks.table", file=sys.stderr)
            return 1
        return 0
    if fresh != current:
        README.write_text(fresh, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
