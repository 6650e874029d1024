"""Screenshots of the status page for the docs, taken in the real browser the tests use.

A daemon runs in-process on the shared video (looped, real time, the shipped default model),
headless Chromium opens its page, and after ``--seconds`` (so the timeline has a few minutes)
the page is saved at a laptop and at a phone width::

    .venv/bin/python tests/screenshot_status_page.py --seconds 150
    # -> docs/status-page.png, docs/status-page-phone.png

Not a test (pytest does not collect it): it changes files under docs/.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import ROOT, SHARED, chromium, make_config, start, stop, wait_until

from feredge.edge.daemon.run import Daemon
from feredge.edge.model import default_model_path

log = logging.getLogger("screenshot")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "status-page.png")
    ap.add_argument("--phone", type=Path, default=ROOT / "docs" / "status-page-phone.png")
    ap.add_argument("--seconds", type=float, default=150.0, help="let the timeline fill this long first")
    ap.add_argument("--video", type=Path, default=SHARED / "media" / "woman2.mp4")
    ap.add_argument("--snapshots", action="store_true", help="show pixels (http.snapshots); default: none")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = make_config(default_model_path(), camera={"name": "shelf", "source": str(args.video), "loop": True},
                      http={"enabled": True, "port": 0, "snapshots": args.snapshots})
    d = Daemon(cfg)
    t = start(d)
    try:
        assert wait_until(lambda: d.ready, 60), "the daemon did not get ready"
        base = f"http://127.0.0.1:{d.http.port}/"
        with chromium() as browser:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(base)
            log.info("page open at %s; waiting %.0f s for the timeline", base, args.seconds)
            time.sleep(args.seconds)
            page.screenshot(path=str(args.out), full_page=True)
            phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=1.5)
            phone.goto(base)
            phone.wait_for_selector("section.camera .face", timeout=30000)
            time.sleep(6)  # one timeline message (every 5 s) has arrived
            phone.screenshot(path=str(args.phone), full_page=True)
        log.info("wrote %s and %s", args.out, args.phone)
    finally:
        stop(d, t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
