"""Check what this device can run: interpreter backend, face cascade, cameras, Coral, model.

Prints one line per check and what to install for anything missing. Exits 0 when feredge
can classify (even without a camera or a Coral); 1 only if nothing can run.
"""

from __future__ import annotations

import argparse
import glob
import json
import platform
import sys
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="also check this model (default: the shipped model, if installed)")
    p.add_argument("--backend", default="auto", help="backend to check (default: the one classify would use)")
    p.add_argument("--json", action="store_true", help="print the findings as one JSON object")


def _pkg_version(name: str) -> str | None:
    # imported here: importlib.metadata costs ~0.1 s and the CLI imports every command module
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def collect(model: str | None = None, backend: str = "auto") -> dict[str, Any]:
    """All findings as a dict (also used by the daemon's status); never raises for a missing piece
    (an unknown backend name is bad input, and is an error)."""
    from feredge import __version__
    from feredge.edge.daemon.identity import node_id

    r: dict[str, Any] = {
        "feredge": __version__,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "node_id": node_id(),  # $FEREDGE_NODE_ID or the machine-id default (mqtt.node_id is the daemon's)
        "todo": [],
    }
    todo: list[str] = r["todo"]
    runtime = _interpreter(r, backend, todo)
    _opencv(r, todo)
    # Cameras the kernel exposes (V4L2); the Pi camera module shows up here too with libcamera.
    r["cameras"] = sorted(glob.glob("/dev/video*"), key=lambda p: (len(p), p))
    r["picamera2"] = _pkg_version("picamera2")
    if not r["cameras"] and not r["picamera2"]:
        r["camera_hint"] = (
            "no camera seen: plug in a USB camera or enable the Pi camera (apt install python3-picamera2)"
        )
    r["coral"] = _coral(runtime)
    r["model"] = _check_model(model, backend if runtime is not None else None, todo)
    r["model_given"] = model is not None
    r["can_run"] = runtime is not None and bool(r.get("cascade")) and r["model"].get("ok", False)
    r["can_run_without_model"] = runtime is not None and bool(r.get("cascade"))
    return r


def _interpreter(r: dict[str, Any], backend: str, todo: list[str]) -> Any:
    """Every backend's package (without importing TensorFlow), and the runtime ``backend`` gives."""
    from feredge.edge import backends
    from feredge.edge.errors import FeredgeError

    r["backends_installed"] = {
        name: _pkg_version(backends.backend_module(name).PACKAGE) for name in backends.BACKENDS
    }
    if backend != "auto":
        backends.backend_module(backend)  # an unknown name is bad input (one-line error), not a missing package
    try:
        runtime = backends.load_runtime(backend)
    except FeredgeError as e:
        r["interpreter"] = {"error": str(e)}
        pkg = backends.backend_module(backend).PACKAGE if backend != "auto" else "ai-edge-litert"
        todo.append(f"pip install {pkg}  (the TFLite interpreter)")
        return None
    r["interpreter"] = {"backend": runtime.name, "version": runtime.version}
    return runtime


def _opencv(r: dict[str, Any], todo: list[str]) -> None:
    from feredge.edge.errors import FeredgeError, one_line

    try:
        import cv2
    except ImportError as e:
        r["opencv"], r["cascade"], r["cascade_error"] = None, None, one_line(e, with_type=False)
        todo.append("pip install 'opencv-python-headless<5'")
        return
    r["opencv"] = cv2.__version__
    from feredge.edge.detect import find_cascade

    try:
        r["cascade"] = str(find_cascade())
    except FeredgeError as e:
        r["cascade"], r["cascade_error"] = None, str(e)
        todo.append("pip install opencv-python-headless  or  apt install opencv-data  (Haar cascade)")


def _coral(runtime: Any) -> dict[str, Any]:
    if runtime is None:
        return {"ok": False, "why": "no interpreter to load the delegate with"}
    from feredge.edge.backends import coral

    try:
        coral.load_edgetpu_delegate(runtime)
        return {"ok": True, "library": coral.library_name()}
    except coral.CoralUnavailable as e:
        return {"ok": False, "why": str(e)}


def _check_model(model: str | None, backend: str | None, todo: list[str]) -> dict[str, Any]:
    from feredge.edge.errors import FeredgeError

    if backend is None:
        return {"ok": False, "why": "no interpreter"}
    try:
        import numpy as np

        from feredge.edge.model import Classifier

        clf = Classifier(model, backend=backend, device="cpu")
        c = clf.contract
        probs = clf.predict(np.full((c.input.height, c.input.width), 128, np.uint8))
        info = clf.describe()
        info.update(ok=True, sha256_checked=bool(c.artifacts), outputs=len(probs))
        return info
    except FeredgeError as e:
        if model is None:
            todo.append("pass --model PATH (a .tflite or export directory)")
        else:
            todo.append(f"the model {model} cannot be used: re-export it or copy it again")
        return {"ok": False, "why": str(e)}


def _print_human(r: dict[str, Any]) -> None:
    out = sys.stdout.write
    out(f"feredge {r['feredge']}  Python {r['python']}  {r['platform']}  node {r['node_id']}\n")
    it = r["interpreter"]
    others = ", ".join(f"{k} {v}" if v else f"{k} not installed" for k, v in r["backends_installed"].items())
    if "error" in it:
        out(f"[FAIL] interpreter: {it['error']}\n")
    else:
        out(f"[ OK ] interpreter: {it['backend']} {it['version']}  (installed: {others})\n")
    if r.get("cascade"):
        out(f"[ OK ] face cascade: {r['cascade']}  (OpenCV {r['opencv']})\n")
    else:
        out(f"[FAIL] face cascade: {r.get('cascade_error')}\n")
    if r["cameras"] or r["picamera2"]:
        cams = ", ".join(r["cameras"]) or "none under /dev/video*"
        pic = f"; picamera2 {r['picamera2']}" if r["picamera2"] else ""
        out(f"[ OK ] cameras: {cams}{pic}\n")
    else:
        out(f"[ -- ] cameras: {r['camera_hint']}\n")
    co = r["coral"]
    out(f"[ OK ] coral: {co['library']} loaded, Edge TPU found\n" if co["ok"] else f"[ -- ] coral: {co['why']}\n")
    m = r["model"]
    if m.get("ok"):
        sha = "sha256 checked" if m["sha256_checked"] else "no sidecar, sha256 not checked"
        out(f"[ OK ] model: {m['name']} ({m['model']}) input {m['input']} {m['input_quant']['dtype']}, "
            f"{len(m['labels'])} labels [{', '.join(m['labels'])}], {m['activation']} T={m['temperature']}, {sha}\n")
    else:
        out(f"[{'FAIL' if r['model_given'] else ' -- '}] model: {m['why']}\n")
    for t in r["todo"]:
        out(f"  to do: {t}\n")
    if r["can_run"]:
        out("summary: ready — feredge classify can run here\n")
    elif r["model_given"] and r["can_run_without_model"]:
        out("summary: runtime ready, but the model given cannot be used\n")
    elif r["can_run_without_model"]:
        out("summary: runtime ready; a model is needed (--model PATH)\n")
    else:
        out("summary: cannot classify yet — install what is listed above\n")


def run(args: argparse.Namespace) -> int:
    r = collect(args.model, args.backend)
    if args.json:
        print(json.dumps(r, default=str))
    else:
        _print_human(r)
    if r["model_given"] and not r["model"].get("ok"):
        return 1  # the model asked about does not work: say so in the exit status too
    return 0 if r["can_run_without_model"] else 1
