"""benchmarks/README.md stays short and its table of figures stays the one results/*.json give.

Fast and TensorFlow-free: benchmarks.table reads JSON and markdown only.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from conftest import REPO

from benchmarks import table

BENCH_README = REPO / "benchmarks" / "README.md"
BENCH_README_LIMIT = 10 * 1024  # bytes: how to run, the goals, one generated table
LINK_INTO = re.compile(r"\]\(([^)\s]*benchmarks/README\.md)#([^)\s]+)\)")


def test_bench_readme_is_at_most_10_kb():
    size = BENCH_README.stat().st_size
    assert size <= BENCH_README_LIMIT, f"benchmarks/README.md is {size} bytes; at most 10 KB"


def test_bench_readme_table_is_the_generated_one():
    text = BENCH_README.read_text(encoding="utf-8")
    assert table.render(text) == text, (
        "benchmarks/README.md's table is stale: run `python -m benchmarks.table` and commit"
    )
    for result in sorted((REPO / "benchmarks" / "results").glob("*.json")):
        assert f"(results/{result.name})" in text, f"no row for {result.name}"


def _slugs(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but - and _ dropped, spaces to -."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", markdown, re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_links_into_the_bench_readme_name_its_sections():
    anchors = _slugs(BENCH_README.read_text(encoding="utf-8"))
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    links = [(d.name, a) for d in docs for _, a in LINK_INTO.findall(d.read_text(encoding="utf-8"))]
    assert links, "no doc links into a section of benchmarks/README.md: is LINK_INTO stale?"
    missing = [f"{doc} -> #{anchor}" for doc, anchor in links if anchor not in anchors]
    assert not missing, f"links to sections benchmarks/README.md lacks: {missing}"


def _result(tmp: Path, name: str, row: dict) -> None:
    (tmp / f"{name}.json").write_text(json.dumps(row), encoding="utf-8")


def test_any_new_result_file_gets_a_row_with_goal_verdict_accuracy_date_and_machine(tmp_path):
    """A file as benchmarks.common.report writes it, and one recording its own goals_met."""
    _result(
        tmp_path,
        "geometry",
        {
            "name": "geometry",
            "value": 3.0,
            "baseline": 2.0,
            "ratio": 1.5,
            "goal": ">= 2x",
            "unit": "images/s",
            "machine": "box A",
            "date": "2031-01-02",
            "test_accuracy": 0.8123,
            "ci_low": 0.75,
            "ci_high": 0.86,
            "test_n": 200,
        },
    )
    _result(
        tmp_path,
        "edge",
        {
            "goal": "size <= 0.5x",
            "machine": "box B",
            "datasets": [{"dataset": "cats", "size_ratio": 0.4, "goals_met": {"size": True}}],
        },
    )
    rows = {line.split("]")[0][3:]: line for line in table.table(tmp_path).splitlines()[2:]}
    geometry = rows["geometry"]
    assert "3 images/s vs 2: ratio 1.5" in geometry
    assert "ratio >= 2 (1.5): **no**" in geometry  # a one-comparison goal is the ratio's, judged
    assert "0.812 [0.750, 0.860] n 200" in geometry
    assert "2031-01-02" in geometry and "| M2 |" in geometry  # machines tagged in file order
    edge = rows["edge"]  # no name, no date, no value: the stem, "not recorded", its list's ratio
    assert "cats: size_ratio 0.4" in edge and "cats: size: yes" in edge
    assert "not recorded" in edge and "| M1 |" in edge
    assert "M1: box B; M2: box A" in table.table(tmp_path)


def test_a_goal_clause_naming_a_field_is_judged_and_one_in_words_is_not():
    row = {
        "value": 1.0,
        "baseline": 1.0,
        "ratio": 1.0,
        "overhead_ratio": 4.2,
        "goal": "overhead_ratio <= 2.0 and export <= 15% of the total",
    }
    assert table.met(row) == "overhead_ratio <= 2.0 (4.2): **no**; 1 more not judged"
    assert table.met({"goal": "faster than before"}) == "not recorded"
    # a clause with no comparison is counted, never dropped (retrain's missed drift clause was)
    words = {
        "second_run_ratio": 0.3,
        "goal": "second_run_ratio <= 0.5; drift_false_positives 0 of 20",
    }
    assert table.met(words) == "second_run_ratio <= 0.5: yes; 1 more not judged"
    # a clause with a judged and an unjudged comparison counts the unjudged one; commas in
    # parentheses or in a number split nothing
    mixed = {"ratio": 0.9, "goal": "<= 1,000 s (ratio <= 1, as in 2025); n >= 3"}
    assert table.met(mixed) == "ratio <= 1: yes; 2 more not judged"


def test_check_fails_on_a_stale_table_and_passes_once_rewritten(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    results = tmp_path / "results"
    shutil.copytree(REPO / "benchmarks" / "results", results)
    readme.write_text(f"# B\n\n{table.START}\n| old |\n{table.END}\ntail\n", encoding="utf-8")
    monkeypatch.setattr(table, "README", readme)
    monkeypatch.setattr(table, "RESULTS", results)
    assert table.main(["--check"]) == 1
    assert table.main([]) == 0
    assert table.main(["--check"]) == 0
    assert readme.read_text(encoding="utf-8").endswith(f"{table.END}\ntail\n")
    _result(results, "late", {"name": "late", "machine": "m"})  # a result added later
    assert table.main(["--check"]) == 1


def test_the_recipes_goals_are_judged_per_clause_from_the_rows():
    from benchmarks.recipes import goals_met

    def row(d, recipe, acc, s=60):
        return {"dataset": d, "recipe": recipe, "test_accuracy": acc, "seconds": s}

    rows = [
        row("flowers", "auto", 0.78), row("flowers", "manual", 0.76),
        row("flowers", "head-only", 0.64), row("textures", "auto", 0.86, s=1000),
        row("textures", "manual", 0.84), row("textures", "head-only", 0.87),
    ]  # fmt: skip
    got = goals_met(rows)
    assert got["mean auto-manual >= +0.01"] and got["none < manual - 0.01"]
    assert got["textures >= 0.85"] and got["flowers >= manual"]
    assert not got["none < head-only"]  # textures: 0.86 < 0.87
    assert not got["auto <= 15 min"]  # textures: 1,000 s
    rows[0]["test_accuracy"] = 0.74  # flowers now 0.02 under manual; mean -0.0
    got = goals_met(rows)
    assert not got["mean auto-manual >= +0.01"] and not got["flowers >= manual"]
    assert not got["none < manual - 0.01"]
