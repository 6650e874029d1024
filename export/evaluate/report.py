"""The export report: what was written, how big, which ops, and how closely each artifact
follows the desktop model on held-out faces (same field names as the parity suite).

JSON for machines (CI gates, the parity suite), Markdown for the person who ran the export.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from feredge.edge.fsutil import atomic_write_text

JSON_NAME = "export-report.json"
MD_NAME = "export-report.md"


def _clean(v: Any) -> Any:
    """JSON has no NaN: write null for metrics that do not apply (e.g. no labelled faces)."""
    if isinstance(v, float):
        return None if math.isnan(v) or math.isinf(v) else round(v, 6)
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{100 * v:.2f} %"


def _num(v: Any, fmt: str = ".4f") -> str:
    return "n/a" if v is None else format(v, fmt)


def to_markdown(r: dict[str, Any]) -> str:
    lines = [f"# Export report: {r['name']}", ""]
    src = r["source"]
    lines += [f"- Model: `{src['file']}` ({src['format']}, sha256 `{src['sha256'][:16]}…`)",
              f"- Input: {r['input']}, normalisation {r['normalize']}, output {r['output']}",
              f"- Labels: {', '.join(r['labels'])}",
              f"- Calibration: {r['calibration']['description']} — sha256 `{r['calibration']['sha256'][:16]}…`, "
              f"{r['calibration']['skipped']} unreadable skipped",
              f"- Held-out check: {r['heldout']['description']} — {r['heldout']['n']} faces, "
              f"{r['heldout']['skipped']} unreadable skipped",
              ""]
    if r.get("desktop_accuracy") is not None:
        lines += [f"Desktop model accuracy on the labelled held-out faces: {_pct(r['desktop_accuracy'])}", ""]
    lines += ["## Artifacts", "",
              "| file | bytes | agreement | agreement (margin > 0.1) | mean abs dp | max abs dp | accuracy |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for name, a in r["artifacts"].items():
        m = a.get("metrics") or {}
        if not m:
            lines.append(f"| `{name}` | {a['bytes']:,} | reference (desktop model) | | | | "
                         f"{_pct(r.get('desktop_accuracy'))} |")
            continue
        lines.append(f"| `{name}` | {a['bytes']:,} | {_pct(m.get('agreement'))} | "
                     f"{_pct(m.get('agreement_margin'))} (n={m.get('n_margin', 0)}) | {_num(m.get('mean_abs_dp'))} | "
                     f"{_num(m.get('max_abs_dp'))} | {_pct(a.get('accuracy'))} |")
    lines += _int8_section(r)
    lines += ["", "## Ops", ""]
    for name, a in r["artifacts"].items():
        if a.get("ops"):
            ops = ", ".join(o if isinstance(o, str) else f"{o['op']} v{o['version']} x{o['count']}" for o in a["ops"])
            lines.append(f"- `{name}`: {ops}")
        q = a.get("quantization")
        if q:
            lines.append("  - I/O: " + "; ".join(
                f"{k} {v['dtype']}" + ("" if v["dtype"] == "float32" else
                                       f" scale={v['scale']:.6g} zero_point={v['zero_point']}")
                for k, v in q.items()))
    if r.get("edgetpu"):
        e = r["edgetpu"]
        lines += ["", "## Edge TPU", "",
                  f"- {e['mapped_ops']} of {e['total_ops']} ops map to the Edge TPU"
                  + (" (all)" if e["ok"] else ""), *[f"- {p}" for p in e["problems"]]]
        if e.get("compiled"):
            lines.append(f"- compiled: `{e['compiled']}`")
        if e.get("instructions"):
            lines.append(f"- {e['instructions']}")
    if r.get("repairs"):
        lines += ["", "## Repairs made in memory", "", *[f"- {x}" for x in r["repairs"]]]
    if r.get("warnings"):
        lines += ["", "## Warnings", "", *[f"- {x}" for x in r["warnings"]]]
    if r.get("timings"):
        lines += ["", "## Timings (s)", "", ", ".join(f"{k} {v:.1f}" for k, v in r["timings"].items())]
    lines += ["", f"Tools: {', '.join(f'{k} {v}' for k, v in r['tools'].items())}", ""]
    return "\n".join(lines)


def _int8_section(r: dict[str, Any]) -> list[str]:
    """How each int8 artifact was made, and what each alternative scored on the selection faces."""
    rows = [(name, a["int8"]) for name, a in r["artifacts"].items() if a.get("int8")]
    if not rows:
        return []
    out = ["", "## How the int8 copies were made", ""]
    for name, c in rows:
        kept = c.get("strategy") or c.get("method")
        how = [f"ranges `{kept}`"]
        if c.get("weights_rounded"):
            how.append("weights rounded by GPTQ")
        if c.get("bias_corrected"):
            how.append("bias-corrected")
        if c.get("pinned_input"):
            how.append("input pinned to raw pixel codes 0..255 (q = p - 128, exact)")
        if c.get("input_folded"):
            how.append("normalisation folded into the first Conv")
        out.append(f"- `{name}`: {', '.join(how)}")
        for k, sc in (c.get("scores") or {}).items():
            final = c.get("kept") or (f"{kept}+bias" if c.get("bias_corrected") else kept)
            mark = " (kept)" if k == final else " (its ranges kept)" if k == kept else ""
            out.append(f"  - {k}: agreement {_pct(sc['agreement'])}, mean abs dp {_num(sc['mean_abs_dp'])}{mark}")
        d = c.get("diagnosis")
        if d:
            out.append("  - why it falls short of 99 %:")
            out += [f"    - {f}" for f in d["findings"]]
            out += [f"    - own int8 error of `{x['op']}`: {x['rmse_over_scale']:.2f} of a step" for x in d["layers"]]
    n_sel = max((c.get("selection_faces") or 0) for _, c in rows)
    if n_sel:
        out.append(f"- scored on {n_sel} selection faces from the calibration source (held out from "
                   "calibration, never the test faces)")
    return out


def write(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    clean = _clean(report)
    j, m = out_dir / JSON_NAME, out_dir / MD_NAME
    atomic_write_text(j, json.dumps(clean, indent=2) + "\n")
    atomic_write_text(m, to_markdown(clean))
    return j, m
