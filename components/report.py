"""report.html: what a person needs to trust (or not) the model evaluate just scored.

Pure numpy, PIL and html: the per-model intervals (from components/stats.py), the
confidently-wrong gallery and the page itself. evaluate.py computes the scores and calls
`write_report`. Every piece of text from data or config goes through html.escape.
"""

from __future__ import annotations

import base64
import io
import math
import os
import re
from html import escape

import numpy as np

from graft.components.stats import BOOTSTRAP_REPS, wilson

Z95 = 1.959964  # two-sided 95 % normal quantile
GALLERY = 12  # most confidently wrong test images shown
THUMB = 112  # thumbnail side, pixels

MODEL_NAMES = {
    "head_only": "head only (frozen base)",
    "candidate": "fine-tuned (candidate)",
    "baseline": "served baseline",
}


def top_k_correct(probs: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    k = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1)[:, :k]
    return (top == y[:, None]).any(axis=1)


def intervals(probs: np.ndarray, y: np.ndarray, k: int) -> dict:
    """Accuracy and top-k, each with its Wilson 95 % interval, over n test images."""
    n = len(y)
    hit = probs.argmax(1) == y
    hit_k = top_k_correct(probs, y, k)
    return {
        "n": n,
        "accuracy": [float(hit.mean()) if n else 0.0, *wilson(int(hit.sum()), n)],
        f"top_{min(k, probs.shape[1])}": [
            float(hit_k.mean()) if n else 0.0,
            *wilson(int(hit_k.sum()), n),
        ],
    }


def confidently_wrong(
    probs: np.ndarray, y: np.ndarray, limit: int = GALLERY
) -> list[tuple[int, int, float]]:
    """(test index, predicted class, its score) of the wrong answers, most confident first."""
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != y)
    order = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")]
    return [(int(i), int(pred[i]), float(probs[i, pred[i]])) for i in order[:limit]]


def thumbnail(blob: bytes, side: int = THUMB) -> str | None:
    """A small inline JPEG (data: URI) of an encoded image; None if it will not decode."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(blob)) as im:
            im = im.convert("RGB")
            scale = side / max(im.size)  # small images are scaled up too, to be seen
            size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
            im = im.resize(size, Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=80)
    except Exception:  # noqa: BLE001 - a thumbnail is decoration; the row still shows
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


# ------------------------------------------------------------------ the page

# Paths wrap after a separator (path_html's <wbr>), not inside a word; overflow-wrap:anywhere
# is the last resort for one name longer than its column.
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em 2em;color:#222;
max-width:1100px}
h1{margin-bottom:.2em} h2{margin-top:1.6em;border-bottom:2px solid #eee;padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0} td,th{padding:4px 10px;
border-bottom:1px solid #ddd;text-align:right} th{background:#f6f6f6}
td:first-child,th:first-child,td.txt,th.txt{text-align:left}
.ok{color:#17722b;font-weight:bold} .bad{color:#a61b1b;font-weight:bold}
.muted{color:#666;font-size:.9em} code{background:#f3f3f3;padding:1px 4px;border-radius:3px}
.gallery{display:flex;flex-wrap:wrap;gap:10px}
.card{width:150px;border:1px solid #ddd;border-radius:6px;padding:6px;font-size:.85em}
.card img{display:block;margin:0 auto 4px;max-width:138px;max-height:138px}
.card .path{color:#666;overflow-wrap:anywhere;font-size:.8em}
dl.prov{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:2px 14px}
dl.prov dt{font-weight:bold} dl.prov dd{margin:0;overflow-wrap:anywhere}
td.path{text-align:left;overflow-wrap:anywhere;font-size:.85em;max-width:22em}
td.thumb{padding:2px;text-align:center} td.thumb img{display:block;width:64px;height:64px;
object-fit:contain}
"""


def path_html(text: str) -> str:
    """Text, escaped, whose paths (and other long names) may wrap after a separator (/ _ - .)
    rather than mid-word; words of prose are left alone."""
    words = re.split(r"(\s+)", text)
    out = []
    for w in words:
        if "/" in w or len(w) > 30:
            w = re.sub(r"(?<=[^/])([/_.-])(?=.)", lambda m: m.group(1) + "\0", w)
        out.append(escape(w).replace("\x00", "<wbr>"))
    return "".join(out)


HEX = re.compile(r"[0-9a-f]{16,}")


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def _ci(v: list[float]) -> str:
    return f"{_pct(v[0])} <span class=muted>[{_pct(v[1])}, {_pct(v[2])}]</span>"


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{escape(title)}</h2>\n{body}</section>\n'


def _accuracy_table(res: dict, ivs: dict, k: int) -> str:
    show_topk = len(res.get("labels") or []) > k  # top-k of k or fewer classes is always 100%
    rows = []
    for key, name in MODEL_NAMES.items():
        m, iv = res.get(key), ivs.get(key)
        if not m or not iv:
            continue
        if not res.get("fine_tuned", True):  # no fine-tuning ran: the head is the candidate
            if key == "candidate":
                continue
            if key == "head_only":
                name = "head only (frozen base): the candidate, no fine-tuning ran"
        topk = next((v for n, v in iv.items() if n.startswith("top_")), None)
        topk_cell = f"<td>{_ci(topk) if topk else '-'}</td>" if show_topk else ""
        rows.append(
            f"<tr><td>{escape(name)}</td><td>{_ci(iv['accuracy'])}</td>"
            f"{topk_cell}<td>{m['macro_f1']:.3f}</td>"
            f"<td>{m['log_loss']:.3f}</td><td>{m['ece']:.3f}</td></tr>"
        )
    n = ivs.get("candidate", {}).get("n", 0)
    topk_head = f"<th>top-{k}</th>" if show_topk else ""
    return (
        f"<p>On <b>{n}</b> test images. In brackets: the 95% interval (Wilson); with n={n} an "
        f"accuracy near 80% is known to about ±{_pct(Z95 * math.sqrt(0.16 / max(1, n)))}.</p>"
        f"<table><tr><th>model</th><th>accuracy</th>{topk_head}<th>macro-F1</th>"
        f"<th>log loss</th><th>ECE</th></tr>{''.join(rows)}</table>"
    )


def _comparison_table(comps: dict, baseline_note: str) -> str:
    if not comps:
        return f"<p>No comparison: only one model was scored. {escape(baseline_note)}</p>"
    rows = []
    for name, c in comps.items():
        lo, hi = c["low"], c["high"]
        if lo > 0:
            verdict = '<span class="ok">better</span>'
        elif hi < 0:
            verdict = '<span class="bad">worse</span>'
        else:
            verdict = "no clear difference (interval spans 0)"
        rows.append(
            f"<tr><td>{escape(name)}</td><td>{100 * c['difference']:+.1f} pts</td>"
            f"<td>[{100 * lo:+.1f}, {100 * hi:+.1f}]</td>"
            f"<td>{c['a_only']} / {c['b_only']}</td><td class=txt>{verdict}</td></tr>"
        )
    return (
        "<p>Accuracy differences on the same test images; the 95% interval is a paired "
        f"bootstrap ({BOOTSTRAP_REPS} resamples of the test images). {escape(baseline_note)}</p>"
        "<table><tr><th>comparison</th><th>difference</th><th>95% interval</th>"
        "<th>right only by first / second</th><th class=txt>reading</th></tr>"
        f"{''.join(rows)}</table>"
    )


def _baseline_note(res: dict) -> str:
    if res.get("baseline"):
        return f"Served baseline: version {res.get('baseline_version')}."
    if res.get("baseline_version"):
        return f"Served version {res['baseline_version']} is not comparable (see Verdict)."
    return "No served baseline: this is the first model at the push destination."


def _guard_html(guard: dict | None) -> str:
    if not guard:
        return "<p>No fine-tuning record found (result.json of the fine_tune step).</p>"
    decision = guard.get("guard")
    kept = guard.get("kept")
    gain = guard.get("val_gain")
    on = escape(guard.get("gain_evidence") or f"n={gain['n']}") if gain else ""
    if decision == "kept_head" and gain:
        head = (
            "<p class=bad>The guard kept the simpler head-only model: the fine-tuned model's "
            f"gain {gain['difference']:+.3f} (paired 95% interval [{gain['low']:+.3f}, "
            f"{gain['high']:+.3f}], {on}) is not beyond the noise.</p>"
        )
    elif decision == "kept_head":
        head = "<p class=bad>The guard kept the head-only model: fine-tuning did worse on val.</p>"
    elif decision == "accepted" and gain:
        head = (
            f"<p class=ok>Fine-tuning kept: gain {gain['difference']:+.3f} (paired 95% "
            f"interval [{gain['low']:+.3f}, {gain['high']:+.3f}], {on}), beyond the "
            "noise.</p>"
        )
    elif decision == "accepted":
        head = "<p class=ok>Fine-tuning kept: it did at least as well as the head on val.</p>"
    elif decision == "disabled":
        why = guard.get("skipped") or "fine_tune.enabled: false"
        return (
            f"<p>Fine-tuning did not run ({escape(why)}): the head-only model is the candidate.</p>"
        )
    else:
        head = f"<p>Guard: {escape(str(decision))}</p>"
    rows = []
    for label, key in (
        ("val accuracy, head only", "head_val_accuracy"),
        ("val accuracy, fine-tuned", "fine_tuned_val_accuracy"),
        ("val loss, head only", "head_val_loss"),
        ("val loss, fine-tuned", "fine_tuned_val_loss"),
    ):
        if isinstance(guard.get(key), (int, float)):
            rows.append(f"<tr><td>{label}</td><td>{guard[key]:.4f}</td></tr>")
    unfreeze = guard.get("unfreeze") or {}
    if unfreeze:
        total = unfreeze.get("total_layers", "?")
        where = (
            f"all {total} base layers"
            if unfreeze.get("from_index") == 0
            else f"the top {unfreeze.get('unfrozen_layers', '?')} of {total} base layers, from "
            f"{escape(str(unfreeze.get('from_layer')))}"
        )
        rows.append(f"<tr><td>unfrozen</td><td>{where} (BatchNormalization stays frozen)</td></tr>")
    if isinstance(guard.get("learning_rate"), (int, float)):
        found = guard.get("lr_find")
        how = (
            f" (LR range test: the loss rose from {found['diverged_rate']:.2g} over "
            f"{len(found['losses'])} batches; a third of it, within 0.1x..10x the configured rate)"
            if found
            else ""
        )
        rows.append(f"<tr><td>learning rate</td><td>{guard['learning_rate']:.2g}{how}</td></tr>")
    if guard.get("stage_rates"):
        rows.append(f"<tr><td>per-stage rates</td><td>{escape(guard['stage_rates'])}</td></tr>")
    alone = guard.get("val_only_gain")
    if alone:
        rows.append(
            f"<tr><td>gain on val alone</td><td>{alone['difference']:+.3f} [{alone['low']:+.3f}, "
            f"{alone['high']:+.3f}], n={alone['n']}</td></tr>"
        )
    cv = guard.get("cross_validation")
    if cv:
        folds = "; ".join(
            f"{f['n']} images: {f['head_accuracy']:.3f} → {f['tuned_accuracy']:.3f}"
            for f in cv["folds"]
        )
        rows.append(
            f"<tr><td>held-out folds (head → fine-tuned)</td><td>{cv['k']} folds, "
            f"{cv['seconds']:.0f}s: {folds}</td></tr>"
        )
    rows.append(f"<tr><td>kept</td><td>{escape(str(kept))}</td></tr>")
    return head + f"<table>{''.join(rows)}</table>"


def recall_interval(per_class: dict) -> tuple[float, float, float]:
    """A class's recall with its Wilson 95% interval: hits out of its support."""
    n = int(per_class["support"])
    hits = round(per_class["recall"] * n)
    return (hits / n if n else 0.0, *wilson(hits, n))


def _decimal_ci(v: tuple[float, float, float]) -> str:
    return f"{v[0]:.3f} <span class=muted>[{v[1]:.2f}, {v[2]:.2f}]</span>"


def _per_class_table(res: dict, labels: list[str]) -> str:
    cand, head = res["candidate"]["per_class"], res["head_only"]["per_class"]
    tuned = res.get("fine_tuned", True)
    rows = "".join(
        f"<tr><td>{escape(lab)}</td><td>{cand[lab]['precision']:.3f}</td>"
        f"<td>{_decimal_ci(recall_interval(cand[lab]))}</td><td>{cand[lab]['f1']:.3f}</td>"
        f"<td>{cand[lab]['support']}</td>"
        + (f"<td>{head[lab]['f1']:.3f}</td>" if tuned else "")
        + "</tr>"
        for lab in labels
    )
    smallest = min((cand[lab]["support"] for lab in labels), default=0)
    which = "Fine-tuned (candidate)" if tuned else "Head-only (candidate: no fine-tuning ran)"
    return (
        f"<p>{which} model on the test split; support is the number of test "
        "images of the class. Recall is a share of the support, so its 95% interval (Wilson) "
        f"is wide at small support (the smallest here: {smallest}).</p><table><tr><th>class</th>"
        "<th>precision</th><th>recall [95%]</th><th>F1</th><th>support</th>"
        + ("<th>F1, head only</th>" if tuned else "")
        + f"</tr>{rows}</table>"
    )


def _gallery_html(items: list[dict]) -> str:
    if not items:
        return "<p>None: the candidate classified every test image correctly.</p>"
    cards = []
    for it in items:
        img = f'<img src="{it["thumb"]}" alt="">' if it.get("thumb") else "<p>(no preview)</p>"
        cards.append(
            f'<div class="card">{img}<div>true: <b>{escape(it["true"])}</b></div>'
            f'<div>predicted: <b class="bad">{escape(it["predicted"])}</b> '
            f"{it['score']:.3f}</div>"
            f'<div class="path">{path_html(it.get("path") or "")}</div></div>'
        )
    return (
        "<p>The test images the candidate got wrong with the highest confidence: often a "
        "mislabelled image, or a look-alike class.</p>"
        f'<div class="gallery">{"".join(cards)}</div>'
    )


def _value_html(v: str) -> str:
    """Checksums in a small monospace (a sha256 fits a 1024 px page whole); the rest as text."""
    return f"<code>{v}</code>" if HEX.fullmatch(v) else path_html(v)


def _provenance_html(prov: dict) -> str:
    rows = "".join(
        f"<dt>{escape(k)}</dt><dd>{_value_html(str(v))}</dd>"
        for k, v in prov.items()
        if v is not None
    )
    return f'<dl class="prov">{rows}</dl>'


def advice_html(advice: dict | None) -> str:
    """The advise step's plan (decision, choice, why) and its probes, as the report shows them."""
    if not advice:
        return "<p>No advice recorded (an older run).</p>"
    cell = advice.get("cell") or {}
    head = f"<p>Recipe <b>{escape(advice['recipe'])}</b>"
    if cell:
        head += (
            f": the data is <b>{escape(cell['size'])}</b> and <b>{escape(cell['similarity'])}</b>"
            " to the base's (the seed's size x similarity matrix)"
        )
    rows = "".join(
        f"<tr><td>{escape(d['what'])}</td><td class=txt>{escape(str(d['choice']))}</td>"
        f"<td class=txt>{escape(d['reason'])}</td></tr>"
        for d in advice["decisions"]
    )
    html = head + "</p><table><tr><th>decision</th><th class=txt>choice</th>"
    html += "<th class=txt>why</th></tr>" + rows
    html += "</table>"
    ev = advice.get("evidence")
    if ev:
        probes = "".join(
            f"<tr><td>{escape(p['depth'])}</td><td class=txt>{escape(p['layer'])}</td>"
            f"<td>{p['size']}</td>"
            f"<td>{p['dim']}</td><td>{_ci([p['accuracy'], p['low'], p['high']])}</td>"
            f"<td>{p['n']}</td></tr>"
            for p in ev["probes"]
        )
        html += (
            "<p>Linear probes on frozen features, k-fold cross-validated on the training split "
            f"({ev['n_train']} images, {ev['n_classes']} classes):</p><table><tr><th>depth</th>"
            "<th class=txt>layer</th><th>px</th><th>dim</th><th>accuracy [95%]</th><th>n</th></tr>"
            + probes
            + "</table>"
        )
    geo = (ev or {}).get("geometry")
    if geo:
        rows = ""
        for mode, r in geo["modes"].items():
            g = r.get("gain")
            gain = (
                f"{100 * g['difference']:+.1f} pts <span class=muted>[{100 * g['low']:+.1f}, "
                f"{100 * g['high']:+.1f}]</span>"
                if g
                else "the base's own"
            )
            rows += (
                f"<tr><td class=txt>{escape(mode)}</td>"
                f"<td>{_ci([r['accuracy'], r['low'], r['high']])}</td><td>{gain}</td></tr>"
            )
        html += (
            f"<p>Input geometry (data.resize): the same probe of {escape(geo['layer'])} at "
            f"{geo['size']} px on the same {geo['n']} images and folds; {escape(geo['rule'])}.</p>"
            "<table><tr><th class=txt>resize</th><th>accuracy [95%]</th>"
            f"<th>paired gain over {escape(geo.get('default', 'squash'))} [95%]</th></tr>"
            + rows
            + "</table>"
        )
    return html


DRIFT_MEASURES = {
    "label_linf": "class shares (largest change, L-inf)",
    "embedding_mmd2": "base embeddings (MMD², permutation test)",
    "confidence_js": "served model's top score (JS divergence)",
}


def drift_html(drift: dict) -> str:
    """The drift step's verdict and each measure with its threshold, p-value and flag."""
    if not drift.get("checked"):
        why = "; ".join(drift.get("reasons") or []) or "no reason recorded"
        return f"<p>Not checked: {path_html(why)}.</p>"
    verdict = (
        '<span class="bad">blocked</span>'
        if drift.get("blocked")
        else '<span class="bad">flagged</span>'
        if drift.get("flagged")
        else '<span class="ok">no drift beyond the thresholds</span>'
    )
    compared = drift.get("compared") or {}
    head = (
        f"<p>Drift: {verdict}, compared with the data that served version "
        f"{escape(str(drift.get('served_version')))} was trained on: "
        f"{compared.get('added', '?')} image(s) added since; {compared.get('new_snapshot', '?')} "
        f"images now, {compared.get('served_snapshot', '?')} then. A measure flags when it is "
        "over its threshold and its permutation p-value is under drift.significance (the "
        "embedding test: on its p-value alone).</p>"
    )
    rows = []
    for name, m in (drift.get("metrics") or {}).items():
        label = DRIFT_MEASURES.get(name) or (
            f"image {name.removeprefix('js_')} (JS divergence)" if name.startswith("js_") else name
        )
        p = "-" if m.get("p_value") is None else f"{m['p_value']:.4f}"
        threshold = m.get("threshold")
        on = " (on p)" if m.get("threshold_is") == "p_value" else ""
        flag = '<span class="bad">flagged</span>' if m.get("flagged") else "no"
        rows.append(
            f"<tr><td>{escape(label)}</td><td>{m.get('value', float('nan')):.4f}</td>"
            f"<td>{escape(str(threshold))}{on}</td><td>{p}</td><td>{flag}</td></tr>"
        )
    notes = "".join(f"<li>{path_html(r)}</li>" for r in drift.get("reasons") or [])
    table = (
        "<table><tr><th>measure</th><th>value</th><th>threshold</th><th>p</th><th>flagged</th>"
        f"</tr>{''.join(rows)}</table>"
        if rows
        else ""
    )
    return head + table + (f"<ul>{notes}</ul>" if notes else "")


def near_duplicates_html(pairs: list[dict], thumbs: dict[str, str | None]) -> str:
    """Train ~ val/test pairs validate found, each side with a thumbnail (thumbs by path)."""

    def side(path: str, extra: str) -> str:
        src = thumbs.get(path)
        img = f'<img src="{src}" alt="">' if src else ""
        return f'<td class="thumb">{img}</td><td class="path">{path_html(path)}{extra}</td>'

    rows = "".join(
        "<tr>"
        + side(p["eval_path"], f" ({escape(p['eval_split'])})")
        + side(p["train_path"], "")
        + f"<td>{p['bits']}</td><td>{p['colour']}</td></tr>"
        for p in pairs
    )
    return (
        "<h3>Near-duplicate pairs (train ~ val/test)</h3><table><tr>"
        '<th colspan="2" class="txt">val/test image</th><th colspan="2" class="txt">train image'
        f"</th><th>hash bits</th><th>colour diff</th></tr>{rows}</table>"
    )


def label_issues_html(doc: dict | None, thumbs: dict[str, str | None], shown: int) -> str:
    """advise's label_issues.json: the first `shown` entries, each with its thumbnail (thumbs
    by path), and how the images were checked."""
    from graft.components.label_issues import weak_probe_note

    if doc is None:
        return (
            "<p>Not checked: advise wrote no <code>label_issues.json</code> (recipe manual or "
            "seed measure nothing; recipe auto checks the labels).</p>"
        )
    c = doc["counts"]
    checked = ", ".join(f"{n} {escape(s)}" for s, n in doc["checked"].items())
    head = (
        f"<p>{c['likely_mislabelled']} likely mislabelled image(s) "
        f"({c.get('less_sure', 0)} of them less sure) and "
        f"{c['duplicate_across_classes']} exact duplicate(s) under two classes; checked "
        f"{checked} images{' (a sample)' if doc.get('sampled') else ''} with a "
        f"{doc['folds']}-fold probe of {escape(doc['layer'])} at {doc['size']} px (its accuracy "
        f"{doc['probe_accuracy']:.3f}{escape(weak_probe_note(doc))}). "
        "Confident learning: an image is listed when the probe, "
        "trained without it, gives its label less than that class's typical confidence and "
        "another class at least its own (or, less sure, simply more); lowest probability of "
        "the given label first. "
        f"{'The first ' + str(shown) + ' of all in' if len(doc['issues']) > shown else 'All in'} "
        "<code>label_issues.json</code> beside advice.json.</p>"
    )
    if not doc["issues"]:
        return head
    rows = []
    for it in doc["issues"][:shown]:
        src = thumbs.get(it["path"])
        img = f'<img src="{src}" alt="">' if src else ""
        conf = f"{it['confidence']:.3f}" if it["confidence"] is not None else "-"
        p = it.get("given_probability")
        given_p = f"{p:.3f}" if p is not None else ""
        kind = (
            "duplicate across classes"
            if it["kind"] == "duplicate_across_classes"
            else ("" if it.get("confident", True) else "less sure")
        )
        rows.append(
            f'<tr><td>{it["rank"]}</td><td class="thumb">{img}</td>'
            f'<td class="txt">{escape(it["given"])} <span class="muted">{given_p}</span></td>'
            f'<td class="txt"><b>{escape(str(it["suggested"]))}</b> '
            f'<span class="muted">{escape(kind)}</span></td>'
            f'<td>{conf}</td><td class="txt">{escape(it["split"])}</td>'
            f'<td class="path">{path_html(it["shown_path"])}</td></tr>'
        )
    return (
        head + '<table><tr><th>rank</th><th class="txt">image</th><th class="txt">given (p)</th>'
        '<th class="txt">suggested</th><th>confidence</th><th class="txt">split</th>'
        f'<th class="txt">path</th></tr>{"".join(rows)}</table>'
    )


def _img(path: str, alt: str) -> str:
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}" style="max-width:100%">'


def write_report(
    out_dir: str,
    res: dict,
    plots: dict[str, str],
    *,
    intervals_by_model: dict,
    comparisons: dict,
    guard: dict | None,
    gallery: list[dict],
    provenance: dict,
    top_k: int,
    checks_html: str = "",
    advice: dict | None = None,
    drift: dict | None = None,
    label_issues: str = "",
) -> str:
    """Write report.html into out_dir; returns its path."""
    verdict = "BLESSED" if res["blessed"] else "NOT BLESSED"
    cls = "ok" if res["blessed"] else "bad"
    reasons = "".join(f"<li>{escape(r)}</li>" for r in res["reasons"])
    model = escape(str(provenance.get("model name", "")))
    base = escape(str(provenance.get("base", "")))
    n = intervals_by_model.get("candidate", {}).get("n", 0)
    parts = [
        _section("verdict", "Verdict", f"<ul>{reasons}</ul>"),
        _section("accuracy", "Accuracy", _accuracy_table(res, intervals_by_model, top_k)),
        _section(
            "comparison",
            "Head only vs fine-tuned vs served"
            if res.get("fine_tuned", True)
            else "The candidate (head only) vs served",
            _comparison_table(comparisons, _baseline_note(res)),
        ),
        _section("recipe", "Recipe: what advise measured and chose", advice_html(advice)),
        _section(
            "guard",
            "Fine-tuning guard" if res.get("fine_tuned", True) else "Fine-tuning",
            _guard_html(guard),
        ),
        _section("per-class", "Per-class metrics", _per_class_table(res, res["labels"])),
        _section("wrong", "Most confidently wrong test images", _gallery_html(gallery)),
        _section("label-issues", "Label issues (advise)", label_issues) if label_issues else "",
        _section(
            "confusion", "Confusion matrix", _img(plots["confusion_matrix"], "confusion matrix")
        ),
        _section("per-class-f1", "Per-class F1", _img(plots["per_class_f1"], "per-class F1")),
        _section("curves", "Training curves", _img(plots["training_curves"], "training curves")),
    ]
    if checks_html:
        parts.append(f'<section id="data-checks">{checks_html}</section>\n')
    if drift is not None:  # the drift step ran
        parts.append(_section("drift", "Drift: this data vs the served model's", drift_html(drift)))
    parts.append(_section("provenance", "Provenance", _provenance_html(provenance)))
    html = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Graft evaluation: {model} ({verdict})</title><style>{CSS}</style></head><body>"
        f'<h1>{model}: <span class="{cls}">{verdict}</span></h1>'
        f'<p class="muted">base {base} · {n} test images · data '
        f"{escape(str(provenance.get('data fingerprint') or '-'))} · config "
        f"{escape(str(provenance.get('config hash') or '-'))}</p>\n"
        + "".join(parts)
        + "</body></html>"
    )
    path = os.path.join(out_dir, "report.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(html)
    return path
