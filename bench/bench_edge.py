#!/usr/bin/env python
"""feredge's device pipeline against the ``fer`` package on one CPU core; prints a table.

Both runs happen in this one invocation, on the same video, each in its own process pinned to
one core (``taskset -c CORE``), so the ratios compare like with like on whatever machine runs
this. Numbers from an x86 workstation are not a Raspberry Pi's.

Measured per contender (a child process that prints one line per frame):
- frames/s over the steady part (first result to last result), decode + detect + classify, by
  the wall clock and per CPU-second of the child (from /proc; unaffected by other load on a
  shared machine, the fairer number there);
- frames where exactly one face was found (woman2.mp4 shows one face in every frame);
- time from process start to the first result line;
- peak RSS (``ru_maxrss`` of the child, from ``wait4``).
And for feredge, the per-face int8 classify time (prepare + quantise + invoke + dequantise).

The anchor ``fer`` 25.10.3 runs in its own venv (``.cache/bench-fer-venv``, created on first use
from PyPI) with ``FER(mtcnn=False).detect_emotions(frame)`` per frame, i.e. its Haar detector
and its own quantised TFLite model through TensorFlow.

    python bench/bench_edge.py --model out/fer/            # an export directory or .tflite
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FEREDGE_SHARED", ROOT.parent / "shared"))
FER_VENV = ROOT / ".cache" / "bench-fer-venv"
FER_PACKAGES = ["tensorflow", "opencv-python-headless<5", "pandas", "tqdm", "Pillow", "requests", "setuptools<82"]

TARGETS = {"fps_ratio": 3.0, "first_result_s": 1.0, "peak_rss_mb": 120.0, "classify_ms": 0.5}

FER_WORKER = r"""
import json, os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import cv2
from fer.fer import FER
det = FER(mtcnn=False)
cap = cv2.VideoCapture(sys.argv[1])
limit = int(sys.argv[2]) if len(sys.argv) > 2 else 0
i = 0
while True:
    ok, frame = cap.read()
    if not ok or (limit and i >= limit):
        break
    faces = det.detect_emotions(frame)
    sys.stdout.write(json.dumps({"frame": i, "faces": len(faces)}) + "\n")
    sys.stdout.flush()
    i += 1
"""


@dataclass
class Run:
    name: str
    frames: int = 0
    one_face: int = 0
    first_s: float = float("nan")
    first_cpu_s: float = float("nan")  # CPU seconds the child had used when its first result came
    fps: float = float("nan")
    cpu_fps: float = float("nan")  # frames per CPU-second of the child: robust on a busy machine
    wall_s: float = float("nan")
    rss_mb: float = float("nan")
    rc: int = 0
    err: str = ""


def measure(name: str, cmd: list[str], core: int, env: dict | None = None) -> Run:
    """Start ``cmd`` pinned to ``core``; read its per-frame JSON lines; collect rusage."""
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", str(core), *cmd]
    run = Run(name)
    t0 = time.perf_counter()
    errf = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty child cannot block on it
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errf, text=True,
                         env={**os.environ, **(env or {})}, cwd=ROOT,
                         preexec_fn=None if shutil.which("taskset") else (lambda: os.sched_setaffinity(0, {core})))
    t_first = t_last = None
    cpu_first = cpu_last = None
    for line in p.stdout:
        now = time.perf_counter()
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            continue
        cpu = _cpu_seconds(p.pid)
        if t_first is None:
            t_first, cpu_first = now, cpu
        t_last, cpu_last = now, cpu
        run.frames += 1
        n = len(d["faces"]) if isinstance(d["faces"], list) else int(d["faces"])
        run.one_face += n == 1
    errf.seek(0)
    err = errf.read()
    errf.close()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    run.wall_s = time.perf_counter() - t0
    run.rc = p.returncode
    run.rss_mb = usage.ru_maxrss / 1024.0
    if t_first is not None:
        run.first_s = t_first - t0
        if cpu_first is not None:
            run.first_cpu_s = cpu_first
        if run.frames > 1:
            run.fps = (run.frames - 1) / (t_last - t_first)
            if cpu_first is not None and cpu_last is not None and cpu_last > cpu_first:
                run.cpu_fps = (run.frames - 1) / (cpu_last - cpu_first)
    if run.rc != 0:
        run.err = err.strip().splitlines()[-1] if err.strip() else f"exit {run.rc}"
    return run


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float | None:
    """user+system CPU seconds of a running process (all its threads), from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return None


def ensure_fer_venv() -> Path:
    py = FER_VENV / "bin" / "python"
    ok = py.exists() and subprocess.run([str(py), "-c", "import fer, tensorflow, cv2, pandas"],
                                        capture_output=True).returncode == 0
    if not ok:
        print(f"creating {FER_VENV} (fer 25.10.3 + TensorFlow from PyPI; takes a few minutes)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(FER_VENV)], check=True)
        pip = [str(py), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "fer==25.10.3", "--no-deps"], check=True)
        subprocess.run([*pip, *FER_PACKAGES], check=True)
    return py


def classify_ms(model: str, video: Path, core: int, reps: int) -> tuple[float, float, int]:
    """Median per-face classify ms (full ``classify`` and ``predict_prepared`` only), one core, one thread.

    Timed in CPU time of this process (``time.process_time``) so other load on the machine does not
    inflate it; with one interpreter thread that equals the time a free core would take."""
    os.sched_setaffinity(0, {core})
    import cv2

    from feredge.edge.detect import FaceDetector
    from feredge.edge.model import Classifier
    from feredge.edge.preprocess import crop_face, prepare

    clf = Classifier(model, device="cpu", num_threads=1)
    det = FaceDetector()
    cap = cv2.VideoCapture(str(video))
    crops = []
    while len(crops) < 32:
        ok, frame = cap.read()
        if not ok:
            break
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        src = gray if clf.contract.input.color == "gray" else frame
        crops += [crop_face(src, b, clf.contract.input.face_margin).copy() for b in det.detect_gray(gray)]
    cap.release()
    if not crops:
        return float("nan"), float("nan"), 0
    prepared = [prepare(c, clf.contract.input) for c in crops]
    for c in crops:
        clf.classify(c)  # warm-up
    full, invoke = [], []
    for _ in range(reps):
        t = time.process_time()
        for c in crops:
            clf.classify(c)
        full.append((time.process_time() - t) / len(crops) * 1e3)
        t = time.process_time()
        for x in prepared:
            clf.predict_prepared(x)
        invoke.append((time.process_time() - t) / len(crops) * 1e3)
    size = clf.contract.input
    print(f"classify model: {clf.path.name} {size.height}x{size.width}x{size.channels}, {clf.backend_name}",
          file=sys.stderr)
    return statistics.median(full), statistics.median(invoke), len(crops)


def fmt(v: float, spec: str = ".2f") -> str:
    return "n/a" if v != v else format(v, spec)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="feredge model (.tflite or export dir); default: the shipped model")
    ap.add_argument("--video", default=str(SHARED / "media" / "woman2.mp4"))
    ap.add_argument("--core", type=int, default=0, help="CPU core both contenders are pinned to")
    ap.add_argument("--frames", type=int, default=0, help="limit frames (0 = whole video)")
    ap.add_argument("--no-fer", action="store_true", help="skip the fer anchor")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds per contender (best one kept)")
    ap.add_argument("--reps", type=int, default=30, help="repetitions of the per-face timing")
    ap.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    args = ap.parse_args()
    video = Path(args.video)
    if not video.is_file():
        print(f"bench_edge: video not found: {video}", file=sys.stderr)
        return 2

    feredge = [sys.executable, "-m", "feredge", "classify", str(video), "--json", "--threads", "1"]
    if args.model:
        feredge += ["--model", args.model]
    if args.frames:
        feredge += ["--max-frames", str(args.frames)]
    contenders = [("feredge", feredge, None)]
    if not args.no_fer:
        py = ensure_fer_venv()
        fer_cmd = [str(py), "-c", FER_WORKER, str(video)] + ([str(args.frames)] if args.frames else [])
        contenders.append(("fer 25.10.3", fer_cmd, {"TF_CPP_MIN_LOG_LEVEL": "3"}))
    # Alternate the contenders for several rounds so both see the same background load; keep
    # each one's least-disturbed round (most frames per CPU-second) and print every round.
    rounds: dict[str, list[Run]] = {name: [] for name, _, _ in contenders}
    for i in range(args.rounds):
        for name, cmd, env in contenders:
            r = measure(name, cmd, args.core, env)
            rounds[name].append(r)
            print(f"round {i + 1}: {name}: {r.frames} frames, {fmt(r.fps, '.1f')} frames/s "
                  f"({fmt(r.cpu_fps, '.1f')} per CPU-s), first result "
                  f"{fmt(r.first_s)} s, peak RSS {fmt(r.rss_mb, '.0f')} MB" + (f", error: {r.err}" if r.err else ""),
                  file=sys.stderr)
    runs = [max(rs, key=lambda r: r.cpu_fps if r.cpu_fps == r.cpu_fps else -1.0) for rs in rounds.values()]
    ms_full, ms_invoke, n_crops = classify_ms(args.model, video, args.core, args.reps) if runs[0].rc == 0 else (
        float("nan"), float("nan"), 0)

    print(f"\nvideo {video.name}, pinned to core {args.core}, model {args.model or 'default'}, "
          f"{args.rounds} alternating rounds; checks use the best feredge round (most frames per CPU-s)\n")
    print("| run | frames | 1-face frames | frames/s (wall) | frames per CPU-s | first result s (wall) "
          "| first result CPU-s | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for i in range(args.rounds):
        for name, rs in rounds.items():
            r = rs[i]
            cells = [f"{name} #{i + 1}", r.frames, r.one_face, fmt(r.fps, ".1f"), fmt(r.cpu_fps, ".1f"),
                     fmt(r.first_s), fmt(r.first_cpu_s), fmt(r.rss_mb, ".0f")]
            print("| " + " | ".join(str(c) for c in cells) + " |" + (f" error: {r.err}" if r.err else ""))
    print(f"\nper-face int8 classify in CPU time (prepare+quantise+invoke+dequantise), median of {args.reps} x "
          f"{n_crops} crops: "
          f"{fmt(ms_full, '.3f')} ms; invoke path only (predict_prepared): {fmt(ms_invoke, '.3f')} ms")
    fe = runs[0]
    result = {
        "runs": [vars(r) for r in runs],
        "rounds": {k: [vars(r) for r in v] for k, v in rounds.items()},
        "classify_ms": ms_full,
        "predict_prepared_ms": ms_invoke,
    }
    print("\n| check | value | target | met |")
    print("|---|---:|---:|:-:|")
    if len(runs) > 1:
        fer = runs[1]
        # Ratios per round (the two ran back to back under the same background load), then the median.
        def ratio_of(attr: str) -> float:
            pairs = zip(rounds["feredge"], rounds[fer.name], strict=True)
            vals = [getattr(a, attr) / getattr(b, attr) for a, b in pairs if getattr(b, attr) > 0]
            return statistics.median(vals) if vals else float("nan")

        ratio, cpu_ratio = ratio_of("fps"), ratio_of("cpu_fps")
        result["fps_ratio"], result["cpu_fps_ratio"] = ratio, cpu_ratio
        print(f"| frames/s vs fer (wall clock, median of rounds) | {fmt(ratio)}x | >= {TARGETS['fps_ratio']:.0f}x | "
              f"{'yes' if ratio >= TARGETS['fps_ratio'] else 'NO'} |")
        print(f"| frames per CPU-second vs fer (median of rounds) | {fmt(cpu_ratio)}x | >= "
              f"{TARGETS['fps_ratio']:.0f}x | {'yes' if cpu_ratio >= TARGETS['fps_ratio'] else 'NO'} |")
        print(f"| one-face frames vs fer | {fe.one_face} vs {fer.one_face} | >= | "
              f"{'yes' if fe.one_face >= fer.one_face else 'NO'} |")
    print(f"| first result (wall) | {fmt(fe.first_s)} s | <= {TARGETS['first_result_s']} s | "
          f"{'yes' if fe.first_s <= TARGETS['first_result_s'] else 'NO'} |")
    print(f"| first result (CPU) | {fmt(fe.first_cpu_s)} s | <= {TARGETS['first_result_s']} s | "
          f"{'yes' if fe.first_cpu_s <= TARGETS['first_result_s'] else 'NO'} |")
    print(f"| peak RSS | {fmt(fe.rss_mb, '.0f')} MB | <= {TARGETS['peak_rss_mb']:.0f} MB | "
          f"{'yes' if fe.rss_mb <= TARGETS['peak_rss_mb'] else 'NO'} |")
    print(f"| per-face classify | {fmt(ms_full, '.3f')} ms | <= {TARGETS['classify_ms']} ms | "
          f"{'yes' if ms_full <= TARGETS['classify_ms'] else 'NO'} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
