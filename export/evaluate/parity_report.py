"""The parity suite's report: ``report.json``, ``report.md`` and the pictures, written together.

Kept apart from the run (:mod:`feredge.export.evaluate.parity`) so that reading or changing what the report says
needs no knowledge of how the numbers were computed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from feredge.edge.fsutil import publish, staging_dir
from feredge.export.errors import ExportError
from feredge.export.evaluate import scoring as M


def fmt(v: float | None, nd: int = 4) -> str:
    return "—" if v is None else f"{v:.{nd}f}"


def fmt_pct(v: float | None) -> str:
    return "—" if v is None else f"{v * 100:.2f} %"


def fmt_pp(v: float | None) -> str:
    return "—" if v is None else f"{v * 100:+.2f} pp"


def check_report_dir(out_dir: Path) -> None:
    """Refuse an unusable report folder before spending a minute on inference."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"cannot write the report to {out_dir}: it is a file, not a folder")
    parent = out_dir if out_dir.exists() else next((p for p in out_dir.parents if p.exists()), Path("."))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write the report to {out_dir}: {parent} is not writable")


@dataclass
class Pictured:
    """What the pictures are drawn from, beside the numbers of ``report.json``: the faces, each
    candidate with its probabilities and the reference's on the same tensors, the true classes."""

    images: Any  # an ImageSet: .images are the faces the indices of ``disagreements`` point to
    cands: list[Any]  # feredge.export.evaluate.parity.Candidate
    cand_probs: list[np.ndarray]
    ref_probs: list[np.ndarray]  # per candidate (the reference run on that candidate's preparation)
    y: np.ndarray | None
    labels: list[str]


def write_report(report: dict[str, Any], out_dir: Path, pictured: Pictured) -> None:
    """report.json, report.md and the pictures, all staged and published together."""
    from feredge.export.evaluate import plots

    images, ref_probs, cands, cand_probs, y, labels = (pictured.images, pictured.ref_probs, pictured.cands,
                                                       pictured.cand_probs, pictured.y, pictured.labels)

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create report directory {out_dir}: {e.strerror}") from None
    try:
        with staging_dir(out_dir) as stage:
            pictures: dict[str, list[str]] = {"reference": []}
            if y is not None:
                f = "confusion_reference.png"
                plots.confusion_png(stage / f, M.confusion(ref_probs[0], y, len(labels)), labels,
                                    f"reference: {Path(report['reference']['path']).name}")
                pictures["reference"].append(f)
            for k, (c, p, p_ref, sec) in enumerate(zip(cands, cand_probs, ref_probs, report["candidates"],
                                                          strict=True)):
                stem = f"{k + 1:02d}_{_safe(c.path.name)}"
                pics = []
                if y is not None:
                    plots.confusion_png(stage / f"confusion_{stem}.png", M.confusion(p, y, len(labels)), labels,
                                        f"candidate: {c.path.name}")
                    plots.reliability_png(stage / f"reliability_{stem}.png", M.reliability(p_ref, y),
                                          M.reliability(p, y), ("reference", c.path.name),
                                          (sec["reference_ece"], sec["ece"]))
                    pics += [f"confusion_{stem}.png", f"reliability_{stem}.png"]
                worst = sec["disagreements"]["worst"][: report_worst(report)]
                if worst:
                    faces = [images.images[w["index"]] for w in worst]
                    captions = [
                        f"ref {w['reference']} {w['reference_p']:.2f}\ncand {w['candidate']} {w['candidate_p']:.2f}"
                        + (f"\ntrue {w['true']}" if w["true"] else "")
                        for w in worst
                    ]
                    plots.contact_sheet_png(stage / f"disagreements_{stem}.png", faces, captions,
                                            f"{c.path.name}: worst disagreements (by reference margin)")
                    pics.append(f"disagreements_{stem}.png")
                sec["pictures"] = pics
                pictures[c.path.name] = pics
            report["pictures"] = pictures
            (stage / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
            (stage / "report.md").write_text(render_markdown(report))
            publish(stage, out_dir)
    except OSError as e:
        raise ExportError(f"cannot write the report to {out_dir}: {e.strerror or e}") from None


def report_worst(report: dict[str, Any]) -> int:
    return int(report.get("worst", 24))


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def render_markdown(r: dict[str, Any]) -> str:
    out = _md_head(r) + _md_summary(r) + _md_per_class(r)
    pics = r.get("pictures", {})
    if pics.get("reference"):
        out += ["## Reference", "", *[f"![{p}]({p})" for p in pics["reference"]], ""]
    for c in r["candidates"]:
        out += _md_candidate(c, r["thresholds"]["margin"])
    out += [f"_Generated in {r.get('elapsed_s', 0):.1f} s._", ""]
    return "\n".join(out)


def _md_head(r: dict[str, Any]) -> list[str]:
    ref, data = r["reference"], r["data"]
    out = [
        "# feredge parity report",
        "",
        f"**{'PASSED' if r['passed'] else 'FAILED'}** — {len(r['candidates'])} candidate(s) against "
        f"`{ref['path']}` on {data['n']} faces of `{data['path']}` (split `{data['split']}`"
        + (", labelled" if data["labelled"] else ", unlabelled: agreement only") + ").",
        "",
        "All inputs were prepared once per candidate contract with `feredge.edge.preprocess`; the reference "
        "saw exactly the candidates' tensors.",
        "",
    ]
    if r.get("failures"):
        out += ["## Failures", ""] + [f"- {f}" for f in r["failures"]] + [""]
    return out


def _md_summary(r: dict[str, Any]) -> list[str]:
    ref, th = r["reference"], r["thresholds"]
    out = [
        "## Summary",
        "",
        f"Reference accuracy {fmt_pct(ref['accuracy'])}, ECE {fmt(ref['ece'])} "
        f"(after temperature scaling, T={fmt(ref['temperature'], 3)}: {fmt(ref['ece_ts'])}).",
        "",
        f"| candidate | kind | agreement | agreement (margin > {th['margin']}) | accuracy | Δ accuracy | "
        "mean abs Δp | max abs Δp | mean KL | ECE | ECE (T-scaled) | threshold | result |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in r["candidates"]:
        out.append(
            f"| `{c['name']}` | {c['kind']} | {c['agreement']:.4f} | {fmt(c['agreement_margin'])} "
            f"(n={c['n_margin']}) | {fmt_pct(c['accuracy'])} | {fmt_pp(c['accuracy_delta'])} | "
            f"{c['mean_abs_dp']:.4f} | {c['max_abs_dp']:.4f} | {c['mean_kl']:.4f} | {fmt(c['ece'])} | "
            f"{fmt(c['ece_ts'])} | ≥ {c['thresholds']['min_agreement']:.4f} | "
            f"{'pass' if c['passed'] else 'FAIL'} |"
        )
    return [*out, ""]


def _md_per_class(r: dict[str, Any]) -> list[str]:
    ref = r["reference"]
    if not ref["per_class"]:
        return []
    out = ["## Per-class recall", "", "| class | reference | "
           + " | ".join(f"`{c['name']}` (Δ)" for c in r["candidates"]) + " |",
           "|---|---|" + "---|" * len(r["candidates"])]
    for lab in r.get("classes", r["labels"]):
        cells = []
        for c in r["candidates"]:
            pc = (c["per_class"] or {}).get(lab) or {}
            cells.append(f"{fmt(pc.get('recall'), 3)} ({fmt_pp(pc.get('delta'))})")
        out.append(f"| {lab} | {fmt(ref['per_class'].get(lab), 3)} | " + " | ".join(cells) + " |")
    return [*out, ""]


def _md_candidate(c: dict[str, Any], margin: float) -> list[str]:
    out = [f"## `{c['name']}`", ""]
    if c["failures"]:
        out += [f"- **{f}**" for f in c["failures"]] + [""]
    if c.get("notes"):
        out += [f"- note: {f}" for f in c["notes"]] + [""]
    fo = c.get("footage")
    if fo:
        out += [f"Real footage ({', '.join(f'`{Path(s).name}`' for s in fo['sources'])}: {fo['frames']} frames, "
                f"{fo['faces']} faces): agreement {fmt(fo.get('agreement'))}, margin > {margin}: "
                f"{fmt(fo.get('agreement_margin'))}, mean abs Δp {fmt(fo.get('mean_abs_dp'))}.", ""]
    d = c["disagreements"]
    out += [f"{d['count']} disagreement(s). Most confident reference first:", ""]
    if d["worst"]:
        out += ["| id | reference | candidate | reference margin | true |", "|---|---|---|---|---|"]
        for w in d["worst"][:10]:
            out.append(f"| `{w['id']}` | {w['reference']} {w['reference_p']:.3f} | {w['candidate']} "
                       f"{w['candidate_p']:.3f} | {w['reference_margin']:.3f} | {w['true'] or '—'} |")
        out.append("")
    for p in c.get("pictures", []):
        out += [f"![{p}]({p})", ""]
    return out
