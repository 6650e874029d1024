"""The status page (issue 16): what the device sees, in a real browser, against a running daemon.

Real components throughout: the daemon in-process with the shipped default model, the shared
video or a real MJPEG-over-HTTP camera served by the test (which then goes away), the daemon's
own HTTP server, and Debian's Chromium driven headless by Playwright for Python. The page is
checked for what a maker looks for — the camera's name, a live expression, fps, the offline state
with its reason, the token form off loopback — and the endpoints behind it over plain HTTP.
"""

from __future__ import annotations

import http.client
import json
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import MjpegCamera, ScriptedSource, chromium, http_get, make_config, need, start, stop, wait_until

from feredge.edge.contract import Contract
from feredge.edge.daemon import config as C
from feredge.edge.daemon.run import Daemon
from feredge.edge.daemon.sinks import http as httpsink
from feredge.edge.daemon.timeline import Timeline
from feredge.edge.errors import EdgeError

TOKEN = "s3cret-t0ken"
EVALUATION = {"test_set": "FER2013 PublicTest (3,589 faces)", "accuracy": 0.6412, "agreement": 0.9911, "ece": 0.0213}


# ---- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """The shipped default model, copied with model-card figures in its contract's provenance
    (as scripts/model_card.py writes them), so the page has evaluation figures to show."""
    from feredge.edge.model import default_model_path

    try:
        src = default_model_path()
    except EdgeError as e:
        need(False, str(e))
        raise
    out = tmp_path_factory.mktemp("model")
    tflite = sorted(src.glob("*.tflite"))[0]
    shutil.copy(tflite, out / tflite.name)
    sidecar = sorted(src.glob("*.json"))[0]
    contract = Contract.load(sidecar)
    contract.provenance["evaluation"] = {**EVALUATION, "artifact": tflite.name}
    contract.save(out / sidecar.name)
    return out


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser):
    """A fresh browser context (empty storage) and page; page errors and CSP violations collected."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    # The feed must be read with fetch(): EventSource cannot send the Authorization header.
    ctx.add_init_script("window.EventSource = function () { throw new Error('EventSource used'); };")
    page = ctx.new_page()
    page.set_default_timeout(15000)
    page.problems = []  # type: ignore[attr-defined]
    page.requests = []  # type: ignore[attr-defined]
    page.on("pageerror", lambda e: page.problems.append(f"page error: {e}"))
    page.on("console", lambda m: page.problems.append(m.text)
            if m.type == "error" and "Content Security Policy" in m.text else None)
    page.on("request", lambda r: page.requests.append((r.url, r.headers.get("authorization"))))
    yield page
    ctx.close()
    assert page.problems == []


def _text(locator) -> str:
    """The element's text now, or "" while it is absent (the page redraws a few times a second)."""
    try:
        return locator.inner_text(timeout=1000)
    except Exception:  # playwright's TimeoutError: not there at this moment
        return ""


def _number(locator) -> float:
    text = _text(locator).replace(",", "").split()
    return float(text[0]) if text and text[0] not in ("–", "-") else -1.0


def _card(page, camera: str):
    return page.locator(f'section.camera[data-camera="{camera}"]')


# ---- the ring buffer ------------------------------------------------------------------------------

def test_timeline_counts_per_minute_and_forgets_after_ten_minutes():
    now = [600.0]
    tl = Timeline(minutes=10, clock=lambda: now[0])
    tl.add_events([{"event": "appeared", "camera": "a", "label": "happy"},
                   {"event": "changed", "camera": "a", "label": "sad"},
                   {"event": "left", "camera": "a", "label": "sad"}, {"event": "bogus", "camera": "a"}])
    tl.add_fps("a", 10.0)
    tl.add_fps("a", 20.0)
    now[0] = 659.9  # same minute
    tl.add_events([{"event": "appeared", "camera": "b", "label": "neutral"}])
    snap = tl.snapshot()
    assert snap["width"] == 60 and snap["minutes"] == 10
    assert snap["cameras"]["a"] == [{"t": 600, "events": {"appeared": 1, "changed": 1, "left": 1},
                                     "expressions": {"happy": 1, "sad": 1}, "fps": 15.0, "fps_min": 10.0}]
    assert snap["cameras"]["b"][0]["expressions"] == {"neutral": 1} and snap["cameras"]["b"][0]["fps"] is None
    for minute in range(1, 12):  # eleven more minutes, one fps sample each
        now[0] = 600.0 + 60 * minute
        tl.add_fps("a", float(minute))
    minutes = tl.snapshot()["cameras"]["a"]
    assert len(minutes) == 10 and minutes[0]["t"] == 600 + 60 * 2 and minutes[-1]["fps"] == 11.0
    assert tl.snapshot()["cameras"]["b"] == []  # its only minute is older than ten minutes


# ---- the page on the shared video (privacy default: no pixels) -------------------------------------

def test_page_shows_the_camera_its_faces_and_fps_live(page, model_dir, woman_video):
    from playwright.sync_api import expect

    width, height = _video_size(woman_video)
    cfg = make_config(model_dir, camera={"name": "shelf", "source": str(woman_video), "loop": True},
                      http={"enabled": True, "port": 0})
    d = Daemon(cfg)
    t = start(d)
    try:
        page.goto(f"http://127.0.0.1:{d.http.port}/")
        card = _card(page, "shelf")
        expect(card.locator(".state")).to_have_text("online")
        expect(page.locator("#conn")).to_have_text("live")
        labels = d.cameras["shelf"].pipeline.classifier.labels
        assert wait_until(lambda: _text(card.locator(".headline .expr")) in labels, 15)
        assert wait_until(lambda: _number(card.locator(".fps")) > 1, 15)
        # live: the frame counter and the smoothed scores move as frames flow
        # (the first face: a false detection may add a second one for a moment)
        face = card.locator(".face").first
        frames0, bars0 = _number(card.locator(".frames")), _text(face.locator(".bars"))
        assert wait_until(lambda: _number(card.locator(".frames")) > frames0 + 10, 10)
        assert wait_until(lambda: _text(face.locator(".bars")) not in ("", bars0), 10)
        assert card.locator(".face").first.locator(".bars .bar").count() == len(labels)
        # no pixels by default: the boxes are drawn to scale on an empty frame of the video's size
        assert card.locator(".overlay").get_attribute("viewBox") == f"0 0 {width} {height}"
        assert card.locator(".overlay rect").count() >= 1
        assert card.locator("img.frame").is_hidden()
        expect(card.locator(".caption")).to_contain_text("no pixels")
        # the timeline: an "appeared" bar and an fps point in the current minute (sent every 5 s)
        figure = page.locator('figure.tl[data-camera="shelf"]')
        expect(figure.locator(".bar-stack rect").first).to_be_attached(timeout=12000)
        expect(figure.locator("circle.fps-dot").first).to_be_attached()
        expect(figure.locator(".totals")).to_contain_text("appeared")
        _check_model_and_device(page, d)
    finally:
        stop(d, t)
    urls = [u for u, _auth in page.requests]
    assert not [u for u in urls if "/snapshot/" in u or "/mjpeg/" in u]  # privacy: the page asked for no pixels
    assert any(u.endswith("/api/events") for u in urls)


def _check_model_and_device(page, d: Daemon) -> None:
    from playwright.sync_api import expect

    model = page.locator("#model")
    expect(model).to_contain_text(d.model_name)
    expect(model).to_contain_text("KiB")
    expect(model.locator('dd[data-key="device"]')).to_have_text("CPU")
    expect(model.locator('dd[data-key="backend"]')).to_have_text(d.backend)
    expect(model).to_contain_text("48×48 gray")
    expect(model.locator('dd[data-key="accuracy"]')).to_have_text("64.1 %")
    expect(model.locator('dd[data-key="agreement with float"]')).to_have_text("99.1 %")
    expect(model.locator('dd[data-key="calibration error (ECE)"]')).to_have_text("0.0213")
    device = page.locator("#device")
    expect(device.locator('dd[data-key="MQTT"]')).to_have_text("off")
    expect(device.locator('dd[data-key="version"]')).to_have_text(d.stats()["version"])
    expect(device.locator('dd[data-key="node"]')).to_have_text(d.node_id)  # this device in a fleet
    page.locator('a[href="/metrics"]').click()
    expect(page.locator("#raw-text")).to_contain_text("feredge_camera_fps")


def _video_size(path: Path) -> tuple[int, int]:
    cap = cv2.VideoCapture(str(path))
    try:
        return int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    finally:
        cap.release()


# ---- a camera that goes away; snapshots on -------------------------------------------------------

def test_page_shows_offline_when_the_camera_goes_away(page, model_dir, face_frame):
    from playwright.sync_api import expect

    cam = MjpegCamera(face_frame)
    cfg = make_config(model_dir, camera={"name": "door", "source": cam.url(), "read_timeout": 1.0},
                      http={"enabled": True, "port": 0, "snapshots": True})
    d = Daemon(cfg)
    t = start(d)
    try:
        page.goto(f"http://127.0.0.1:{d.http.port}/")
        card = _card(page, "door")
        expect(card.locator(".state")).to_have_text("online")
        expect(card.locator(".face")).to_have_count(1)
        # snapshots on: the frame itself under the boxes, fetched by the page
        page.wait_for_function("""() => { const i = document.querySelector('[data-camera="door"] img.frame');
                                  return i && !i.hidden && i.naturalWidth === 320; }""")
        _check_annotated_snapshot(d, face_frame)
        cam.close()  # the camera goes away
        expect(card.locator(".state")).to_have_text("offline")
        expect(card.locator(".reason")).not_to_be_empty()
        expect(card.locator(".headline .expr")).to_have_text("offline")
        expect(card.locator(".face")).to_have_count(0)  # its faces left with it
        expect(page.locator("#overall")).to_have_text("1 of 1 camera(s) offline")
        assert wait_until(lambda: _number(card.locator(".fps")) == 0, 10)
    finally:
        cam.close()
        stop(d, t)


def _check_annotated_snapshot(d: Daemon, face_frame: np.ndarray) -> None:
    base = f"http://127.0.0.1:{d.http.port}/snapshot/door.jpg"
    code, raw, ctype = http_get(base)
    code2, annotated, _ = http_get(base + "?annotate=1")
    assert code == code2 == 200 and ctype == "image/jpeg"
    a = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    b = cv2.imdecode(np.frombuffer(annotated, np.uint8), cv2.IMREAD_COLOR)
    assert a.shape == b.shape == face_frame.shape
    assert np.abs(a.astype(int) - b.astype(int)).max() > 100  # a box and a label were drawn


# ---- off loopback: the token -------------------------------------------------------------------

def test_token_is_required_off_loopback(page, model_dir, face_frame):
    from playwright.sync_api import expect

    with pytest.raises(C.ConfigError, match="token"):
        make_config(model_dir, http={"enabled": True, "bind": "0.0.0.0"})
    cfg = make_config(model_dir, http={"enabled": True, "port": 0, "bind": "0.0.0.0", "token": TOKEN, "mjpeg": True})
    d = Daemon(cfg, openers={"cam0": (lambda: ScriptedSource([face_frame], repeat_last=True), False, True)})
    t = start(d)
    try:
        base = f"http://127.0.0.1:{d.http.port}"
        _check_endpoints_without_token(base)
        page.goto(base + "/")
        expect(page.locator("#login")).to_be_visible()
        expect(page.locator("#content")).to_be_hidden()
        page.locator("#token").fill("wrong-guess")
        page.locator("#login-form button").click()
        expect(page.locator("#login-error")).to_have_text("That token was not accepted.")
        page.locator("#token").fill(TOKEN)
        page.locator("#login-form button").click()
        card = _card(page, "cam0")
        expect(card.locator(".state")).to_have_text("online")
        expect(page.locator("#login")).to_be_hidden()
        assert page.locator("#token").input_value() == ""  # not left in the form either
        # MJPEG on: the stream is read with fetch (token in the header) and shown frame by frame
        page.wait_for_function("""() => { const i = document.querySelector('[data-camera="cam0"] img.frame');
                                  return i && !i.hidden && i.naturalWidth === 320 && i.src.startsWith('blob:'); }""")
        assert page.evaluate("() => localStorage.length + sessionStorage.length") == 0
        assert page.context.cookies() == []
        assert TOKEN not in page.url
    finally:
        stop(d, t)
    for url, auth in page.requests:
        assert TOKEN not in url and "token=" not in url
        if "/api/events" in url or "/mjpeg/" in url:
            assert auth in (None, "Bearer wrong-guess", f"Bearer {TOKEN}")
    assert (f"http://127.0.0.1:{d.http.port}/api/events", f"Bearer {TOKEN}") in page.requests


def _check_endpoints_without_token(base: str) -> None:
    for path in ("/", "/app.js", "/style.css"):  # static, no data in it: loads without the token
        code, body, ctype = http_get(base + path)
        assert code == 200 and body and not ctype.startswith("application/json"), path
    for path in ("/api", "/api/stats", "/api/timeline", "/api/events", "/metrics", "/mjpeg/cam0"):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            code, body, ctype = http_get(base + path, headers)
            assert code == 401 and ctype == "application/json" and "error" in json.loads(body), path
    # up/down only; "ok" once the camera is online (it may still be opening right after start)
    assert wait_until(lambda: json.loads(http_get(base + "/healthz")[1]) == {"status": "ok"}, 60)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    code, body, ctype = http_get(base + "/no/such/thing", auth)
    assert code == 404 and json.loads(body) == {"error": "no such endpoint /no/such/thing"}
    code, body, _ = http_get(base + "/api", auth)
    assert code == 200 and "/api/events" in json.loads(body)["feredge"]


# ---- the live feed over plain HTTP: shape, rate, bound, shutdown ---------------------------------

def _open_events(port: int, token: str | None = None) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/api/events", headers={"Authorization": f"Bearer {token}"} if token else {})
    return conn, conn.getresponse()


def _read_event(resp: http.client.HTTPResponse) -> tuple[str, dict]:
    event, data = "", ""
    while True:
        line = resp.fp.readline().decode()
        if line in ("\n", ""):
            return event, json.loads(data)
        key, _, value = line.rstrip("\n").partition(": ")
        event, data = (value, data) if key == "event" else (event, data + value)


def test_events_feed_shape_rate_bound_and_fast_stop(model_dir, face_frame):
    cfg = make_config(model_dir, http={"enabled": True, "port": 0, "token": TOKEN})
    d = Daemon(cfg, openers={"cam0": (lambda: ScriptedSource([face_frame], repeat_last=True), False, True)})
    t = start(d)
    streams = []
    try:
        assert wait_until(lambda: d.cameras["cam0"].faces_now == 1, 30)
        _conn, resp = _open_events(d.http.port, TOKEN)
        streams.append(_conn)
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        events = [_read_event(resp) for _ in range(6)]
        kinds = [k for k, _ in events]
        assert kinds[:2] == ["stats", "timeline"] and kinds.count("stats") >= 5
        stats = [doc for k, doc in events if k == "stats"]
        _check_stats_document(stats[-1], d)
        # about 3 a second: five stats documents take 1.2 s (4 intervals), not 0.1 and not 5
        t0 = time.monotonic()
        for _ in range(5):
            while _read_event(resp)[0] != "stats":
                pass
        assert 0.8 < time.monotonic() - t0 < 4.0
        while len(streams) < httpsink.MAX_LIVE_CLIENTS:
            conn, r = _open_events(d.http.port, TOKEN)
            assert r.status == 200
            streams.append(conn)
        conn, r = _open_events(d.http.port, TOKEN)
        streams.append(conn)
        assert r.status == 503 and "too many live clients" in json.loads(r.read())["error"]
        conn, r = _open_events(d.http.port, "wrong")
        streams.append(conn)
        assert r.status == 401 and "unauthorized" in json.loads(r.read())["error"]
        assert wait_until(lambda: d.http.live_clients() == httpsink.MAX_LIVE_CLIENTS, 5)
    finally:
        t0 = time.monotonic()
        assert stop(d, t) == 0
        stopped = time.monotonic() - t0
        t0 = time.monotonic()
        resp.read()  # the stream ends with the daemon (its socket shut down), not at the client's timeout
        ended = time.monotonic() - t0
        for conn in streams:
            conn.close()
    assert ended < 1.0
    assert stopped < 2.0, f"the daemon took {stopped:.2f} s to stop with {len(streams)} live clients"
    assert d.http.live_clients() == 0


def _check_stats_document(s: dict, d: Daemon) -> None:
    cam = s["cameras"]["cam0"]
    for key in ("online", "reason", "fps", "frames", "corrupt", "reconnects", "faces", "tracks", "inference_ms",
                "detect_ms", "full_searches"):  # every key that was there before
        assert key in cam, key
    for key in ("version", "ts", "uptime", "model", "cameras"):
        assert key in s, key
    labels = d.cameras["cam0"].pipeline.classifier.labels
    assert cam["frame_size"] == {"width": 320, "height": 320}
    track = cam["tracks"][0]
    assert set(track) == {"track_id", "label", "score", "box", "scores"}
    assert list(track["scores"]) == labels and abs(sum(track["scores"].values()) - 1) < 0.02
    assert track["score"] == pytest.approx(max(track["scores"].values()), abs=0.002)
    x, y, w, h = track["box"]
    assert 0 <= x < x + w <= 320 and 0 <= y < y + h <= 320
    m = s["model"]
    assert m["backend"] == d.backend and m["device"] == "cpu" and m["labels"] == labels
    assert m["input"] == {"height": 48, "width": 48, "channels": 1, "color": "gray"}
    assert m["bytes"] == (Path(d.cfg.model.path) / m["file"]).stat().st_size
    assert m["evaluation"]["accuracy"] == EVALUATION["accuracy"]
    assert s["http"] == {"snapshots": False, "mjpeg": False}
