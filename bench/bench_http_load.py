"""The daemon's HTTP server under hostile load (issue 25): idle, slowloris and live-feed clients.

Runs the real ``feredge run`` as a child (the shared video looped at real-time pace, HTTP on) and:
1. measures the pipeline's frames/s unloaded for ``--settle`` seconds (the baseline of this run);
2. holds ``--idle`` connections open for ``--seconds`` (half idle, half slowloris: a request line,
   then one header byte every 2 s), each re-opened as soon as the server closes it, plus ``--live``
   clients on ``/api/events`` (also re-opened when refused), while it polls ``/healthz`` every
   0.5 s and reads the daemon's thread count from ``/proc/PID/status``;
3. reports threads before, during (max) and after, the ``/healthz`` answer time (max, p95), the
   pipeline's frames/s beside the unloaded run, connections closed by the server, and whether the
   daemon stayed up.

``--unit-limits`` runs the daemon in a cgroup with the unit's ``TasksMax=64`` and ``MemoryMax=512M``
(cgroup v1 pids/memory controllers, as root). Targets: /healthz < 1 s throughout, threads bounded
by the configured workers, fps within 10 % of unloaded, every connection closed within its
timeout, the daemon never exits.

    python bench/bench_http_load.py [--seconds 60] [--idle 200] [--live 50] [--unit-limits]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
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
sys.path.insert(0, str(ROOT / "bench"))
from bench_daemon import VIDEO, default_model  # noqa: E402


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return -1


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _fps(base: str) -> tuple[int, float]:
    s = json.loads(_get(base + "/api/stats")[1])
    cam = next(iter(s["cameras"].values()))
    return cam["frames"], time.monotonic()


def _measure_fps(base: str, seconds: float) -> float:
    f0, t0 = _fps(base)
    time.sleep(seconds)
    f1, t1 = _fps(base)
    return (f1 - f0) / (t1 - t0)


class Attackers:
    """Idle and slowloris sockets and live-feed readers, each re-opened when the server closes it."""

    def __init__(self, port: int, idle: int, live: int) -> None:
        self.port, self.stop = port, threading.Event()
        self.closed_by_server = 0
        self.live_refused = 0
        self.live_streaming = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._idle, args=(i % 2 == 1,), daemon=True) for i in range(idle)]
        self.threads += [threading.Thread(target=self._live, daemon=True) for _ in range(live)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _count(self, attr: str, d: int = 1) -> None:
        with self.lock:
            setattr(self, attr, getattr(self, attr) + d)

    def _connections(self):
        """Connections to the daemon, one after another (a new one when the last was closed)."""
        while not self.stop.is_set():
            try:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            except OSError:
                time.sleep(0.2)
                continue
            yield s

    def _idle(self, slow: bool) -> None:
        for s in self._connections():
            with s:
                s.settimeout(2.0)
                if slow:
                    with contextlib.suppress(OSError):
                        s.sendall(b"GET / HTTP/1.1\r\n")
                while not self.stop.is_set():
                    try:
                        if slow:
                            s.sendall(b"X")
                        if s.recv(1024) == b"":
                            self._count("closed_by_server")
                            break
                    except TimeoutError:
                        continue
                    except OSError:
                        self._count("closed_by_server")
                        break

    def _live(self) -> None:
        for s in self._connections():
            with s:
                s.settimeout(2.0)
                try:
                    s.sendall(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                    head = s.recv(4096)
                except OSError:
                    continue
                if b" 200 " not in head.split(b"\r\n", 1)[0]:
                    self._count("live_refused")
                    time.sleep(0.5)
                    continue
                self._count("live_streaming")
                try:
                    while not self.stop.is_set() and s.recv(65536):
                        pass
                except OSError:
                    pass
                finally:
                    self._count("live_streaming", -1)


def _cgroup(pid: int) -> str:
    """Put ``pid`` under the unit's TasksMax=64 and MemoryMax=512M (cgroup v1), or say why not."""
    pids, mem = Path("/sys/fs/cgroup/pids/feredge-bench"), Path("/sys/fs/cgroup/memory/feredge-bench")
    try:
        pids.mkdir(exist_ok=True)
        (pids / "pids.max").write_text("64")
        (pids / "cgroup.procs").write_text(str(pid))
        mem.mkdir(exist_ok=True)
        (mem / "memory.limit_in_bytes").write_text(str(512 << 20))
        (mem / "cgroup.procs").write_text(str(pid))
        return "TasksMax=64 (pids.max), MemoryMax=512M (memory.limit_in_bytes)"
    except OSError as e:
        return f"not applied ({e.strerror}: needs root and cgroup v1 pids/memory controllers)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model (default: the shipped default model)")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--settle", type=float, default=15.0, help="seconds of the unloaded fps measurement")
    ap.add_argument("--idle", type=int, default=200)
    ap.add_argument("--live", type=int, default=50)
    ap.add_argument("--workers", type=int, default=12, help="http.workers of the daemon")
    ap.add_argument("--unit-limits", action="store_true")
    args = ap.parse_args()
    if not VIDEO.is_file():
        print(f"video not found: {VIDEO}", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="bench-http-"))
    model = args.model or default_model(tmp)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp / "config.toml"
    cfg.write_text(f'[model]\npath = "{model}"\n[[camera]]\nname = "cam"\nsource = "{VIDEO}"\nloop = true\n'
                   f'pace = "realtime"\n[jsonl]\nenabled = false\n[http]\nport = {port}\nworkers = {args.workers}\n')
    proc = subprocess.Popen([sys.executable, "-m", "feredge", "run", "--config", str(cfg)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    limits = _cgroup(proc.pid) if args.unit_limits else "none"
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if _get(base + "/healthz", 2)[0] == 200:
                    break
            time.sleep(0.5)
        fps_unloaded = _measure_fps(base, args.settle)
        threads_before = _threads(proc.pid)
        att = Attackers(port, args.idle, args.live)
        att.start()
        health: list[float] = []
        health_fail = 0
        threads_max = threads_before
        f0, t0 = _fps(base)
        end = time.monotonic() + args.seconds
        while time.monotonic() < end and proc.poll() is None:
            t = time.perf_counter()
            try:
                ok = _get(base + "/healthz", 5)[0] == 200
            except OSError:
                ok = False
            health.append(time.perf_counter() - t)
            health_fail += not ok
            threads_max = max(threads_max, _threads(proc.pid))
            time.sleep(0.5)
        f1, t1 = _fps(base)
        fps_loaded = (f1 - f0) / (t1 - t0)
        att.stop.set()
        time.sleep(6)  # every attacker socket closed; the server's header deadline has passed
        threads_after = _threads(proc.pid)
        alive = proc.poll() is None
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for d in ("pids", "memory"):  # the cgroups of --unit-limits, empty now
            with contextlib.suppress(OSError):
                Path(f"/sys/fs/cgroup/{d}/feredge-bench").rmdir()
    health.sort()
    p95 = health[int(0.95 * (len(health) - 1))] if health else float("nan")
    print(f"feredge run with http.workers = {args.workers}; limits: {limits}; CPU {os.cpu_count()} cores")
    print(f"load: {args.idle} idle/slowloris connections (re-opened when closed) + {args.live} live-feed clients, "
          f"{args.seconds:.0f} s")
    print(f"threads: before {threads_before}, during max {threads_max}, after {threads_after}")
    print(f"/healthz: {len(health)} polls, max {max(health, default=float('nan')):.3f} s, p95 {p95:.3f} s, "
          f"median {statistics.median(health) if health else float('nan'):.3f} s, failed {health_fail}")
    print(f"pipeline fps: unloaded {fps_unloaded:.2f}, under load {fps_loaded:.2f} "
          f"({100 * (fps_loaded / fps_unloaded - 1):+.1f} %)")
    print(f"connections closed by the server: {att.closed_by_server}; live feeds refused {att.live_refused} times")
    print(f"daemon alive throughout: {alive}")
    targets = [max(health, default=9) < 1.0, threads_max <= threads_before + args.workers + 2,
               fps_loaded >= 0.9 * fps_unloaded, alive]
    print("targets (healthz < 1 s, threads bounded, fps within 10 %, alive): "
          + ", ".join("OK" if t else "MISSED" for t in targets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
