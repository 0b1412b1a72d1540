"""The label-issues bar on real photos (make test-real; needs ../shared).

A 300-image copy of cats_dogs (150 cats and 150 dogs of its train split, symlinked into
tmp_path) with 10 of the cats filed under dogs; `graft advise` with ImageNet MobileNetV2 must
list at least 8 of the 10 among its first 20 label issues (issue 31's bar).
"""

import json
import os
from pathlib import Path

import pytest
from conftest import MOBILENET_V2, SHARED

CATS_DOGS = SHARED / "datasets" / "cats_dogs" / "train"
WEIGHTS = MOBILENET_V2
PLANTED = 10

pytestmark = [
    pytest.mark.real,
    pytest.mark.skipif(
        not CATS_DOGS.is_dir() or not WEIGHTS.exists(),
        reason=f"real data absent: need {CATS_DOGS} and {WEIGHTS} (../shared beside the clone)",
    ),
]


def _copy_with_planted_cats(root: Path) -> set[str]:
    """150 cats + 150 dogs as symlinks, the last 10 cats under dogs/; their paths."""
    cats = sorted(os.listdir(CATS_DOGS / "cats"))[:150]
    dogs = sorted(os.listdir(CATS_DOGS / "dogs"))[:150]
    for name in ("cats", "dogs"):
        (root / name).mkdir(parents=True)
    planted = set()
    for i, f in enumerate(cats):
        under = "dogs" if i >= len(cats) - PLANTED else "cats"
        (root / under / f).symlink_to(CATS_DOGS / "cats" / f)
        if under == "dogs":
            planted.add(str(root / under / f))
    for f in dogs:
        (root / "dogs" / f).symlink_to(CATS_DOGS / "dogs" / f)
    return planted


def test_ten_cats_filed_under_dogs_are_in_the_first_twenty_label_issues(tmp_path, capsys):
    from graft.components import label_issues as li
    from graft.pipeline.cli import main

    root = tmp_path / "cats_dogs_300"
    planted = _copy_with_planted_cats(root)
    sets = [f"runner.run_root={tmp_path / 'runs'}", f"push.destination={tmp_path / 'models'}"]
    args = ["advise", str(root), "--weights", str(WEIGHTS)]
    assert main([*args, *[a for s in sets for a in ("--set", s)]]) == 0
    out = capsys.readouterr().out
    (found,) = (tmp_path / "runs" / "steps" / "advise").glob(f"*/{li.FILE}")
    doc = json.loads(found.read_text())
    assert sum(doc["checked"].values()) == 300 and not doc["sampled"]
    first = doc["issues"][:20]
    hits = [it for it in first if it["path"] in planted]
    print(
        f"label issues: {len(hits)} of the {PLANTED} planted cats in the first 20 "
        f"({doc['counts']} listed; probe accuracy {doc['probe_accuracy']:.3f}); ranks "
        f"{sorted(it['rank'] for it in doc['issues'] if it['path'] in planted)}"
    )
    assert len(hits) >= 8, [(it["rank"], it["path"]) for it in first]
    assert all(it["given"] == "dogs" and it["suggested"] == "cats" for it in hits)
    assert "label issues:" in out and "dogs -> cats" in out  # graft advise prints them
