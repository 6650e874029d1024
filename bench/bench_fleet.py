"""N devices on one local mosquitto: messages per second delivered, broker CPU and end-to-end
latency as N grows, beside plain paho publishers at the same rates in the same run.

Each simulated device is the real :class:`feredge.edge.daemon.sinks.mqtt.MqttSink` (its queue, topics, QoS 1
state, retained availability, a distinct node id), fed frame records at a camera's rate with
faces that come, change and go, so it publishes what a device publishes (state on change at most
every ``state_interval``, events, stats). Devices are spread over a few processes. The baseline
is the same number of plain paho clients publishing payloads of the same size at the measured
per-device rate. The subscriber timestamps arrivals; payloads carry their send time.

    python bench/bench_fleet.py [--devices 10,100,500] [--seconds 10] [--procs 4]

Numbers, not assertions (docs/daemon.md, "Fleet", has a run and how it extrapolates).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _broker(port: int, tmp: Path) -> subprocess.Popen:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    conf = tmp / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_connections -1\n")
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    raise SystemExit("bench_fleet: mosquitto did not start")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _records(fps: float, seconds: float):
    """Frame records of one camera: a face appears, changes expression now and then, leaves."""
    n = int(fps * seconds)
    for i in range(n):
        faces = [] if (i // int(fps * 4)) % 3 == 2 else [
            {"track_id": 1 + i // int(fps * 12), "label": LABELS[(i // int(fps * 2)) % 7], "score": 0.8,
             "box": [100, 80, 120, 120]}]
        yield {"camera": "cam0", "frame": i, "ts": time.time(), "faces": faces}
        time.sleep(1.0 / fps)


def _feredge_devices(port: int, ids: list[str], seconds: float, fps: float, q) -> None:
    from feredge.edge.daemon.config import MqttConfig
    from feredge.edge.daemon.sinks.mqtt import MqttSink

    sinks = []
    for nid in ids:
        s = MqttSink(MqttConfig(enabled=True, host="127.0.0.1", port=port, discovery=False, state_interval=1.0),
                     ["cam0"], node=nid)
        s.start()
        sinks.append(s)
    time.sleep(1.0)
    for rec in _records(fps, seconds):
        for s in sinks:
            s.frame("cam0", dict(rec))
            if rec["frame"] % int(fps * 5) == 0:
                s.events([{"event": "changed", "camera": "cam0", "track_id": 1, "label": "happy",
                           "ts": time.time()}])
    time.sleep(1.0)
    q.put(sum(s.published for s in sinks))
    for s in sinks:
        s.close()


def _paho_devices(port: int, ids: list[str], seconds: float, rate: float, size: int, q) -> None:
    import paho.mqtt.client as mqtt

    clients = []
    for nid in ids:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"plain-{nid}", protocol=mqtt.MQTTv5)
        c.connect("127.0.0.1", port)
        c.loop_start()
        clients.append(c)
    time.sleep(1.0)
    sent, t0 = 0, time.monotonic()
    pad = "x" * max(0, size - 40)
    while time.monotonic() - t0 < seconds:
        for nid, c in zip(ids, clients, strict=True):
            c.publish(f"plain/{nid}/cam0/state", json.dumps({"ts": time.time(), "pad": pad}), qos=1)
            sent += 1
        time.sleep(max(0.0, 1.0 / rate))
    time.sleep(1.0)
    q.put(sent)
    for c in clients:
        c.disconnect()
        c.loop_stop()


class _Subscriber:
    def __init__(self, port: int, topic: str) -> None:
        import paho.mqtt.client as mqtt

        self.latencies: list[float] = []
        self.count = 0
        self.bytes = 0
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{topic[:5]}",
                             protocol=mqtt.MQTTv5)
        self.c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(topic, qos=1)
        self.c.on_message = self._on
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on(self, client, userdata, msg) -> None:
        now = time.time()
        self.count += 1
        self.bytes += len(msg.payload)
        try:
            ts = json.loads(msg.payload).get("ts")
        except (ValueError, AttributeError):
            return
        if isinstance(ts, (int, float)):
            self.latencies.append(now - ts)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _run(kind: str, port: int, broker: subprocess.Popen, n: int, args, rate: float = 0.0, size: int = 0) -> dict:
    sub = _Subscriber(port, "feredge/#" if kind == "feredge" else "plain/#")
    ids = [f"dev{i:05d}" for i in range(n)]
    chunks = [ids[i::args.procs] for i in range(min(args.procs, n))]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    target = _feredge_devices if kind == "feredge" else _paho_devices
    extra = (args.fps,) if kind == "feredge" else (rate, size)
    procs = [ctx.Process(target=target, args=(port, c, args.seconds, *extra, q)) for c in chunks]
    cpu0, t0 = _cpu_seconds(broker.pid), time.monotonic()
    for p in procs:
        p.start()
    sent = sum(q.get(timeout=args.seconds + 120) for _ in procs)
    for p in procs:
        p.join()
    wall, cpu = time.monotonic() - t0, _cpu_seconds(broker.pid) - cpu0
    sub.close()
    lat = sorted(sub.latencies) or [float("nan")]
    return {"kind": kind, "devices": n, "sent": sent, "delivered": sub.count, "msgs_per_s": sub.count / args.seconds,
            "bytes_per_msg": sub.bytes / max(1, sub.count), "broker_cpu_pct": 100 * cpu / wall,
            "p50_ms": 1000 * statistics.median(lat), "p95_ms": 1000 * lat[int(0.95 * (len(lat) - 1))]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", default="10,100,500")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--fps", type=float, default=5.0, help="frames per second each device's camera delivers")
    args = ap.parse_args()
    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        print("bench_fleet: mosquitto is not installed (apt install mosquitto)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    port = _free_port()
    broker = _broker(port, tmp)
    print(f"cores: {os.cpu_count()}  load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("| publishers | devices | delivered msg/s | per device msg/s | bytes/msg | broker CPU | p50 ms | p95 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    try:
        for n in (int(x) for x in args.devices.split(",")):
            r = _run("feredge", port, broker, n, args)
            per_device = r["msgs_per_s"] / n
            b = _run("paho", port, broker, n, args, rate=per_device, size=int(r["bytes_per_msg"]))
            for x in (r, b):
                name = "feredge MqttSink" if x["kind"] == "feredge" else "plain paho (baseline)"
                print(f"| {name} | {n} | {x['msgs_per_s']:.0f} | {x['msgs_per_s'] / n:.2f} | "
                      f"{x['bytes_per_msg']:.0f} | {x['broker_cpu_pct']:.1f} % | {x['p50_ms']:.1f} | "
                      f"{x['p95_ms']:.1f} |", flush=True)
    finally:
        broker.terminate()
        broker.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
