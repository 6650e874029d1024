"""Find faces in images, folders, video files or a camera and say which expression each shows.

INPUT may be an image, a folder of images, a video file, a camera index (0) or a stream URL.
Prints one line per frame (--json: one JSON object per frame per line) and can write an
annotated copy of the input with --annotate.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image, folder, video file, camera index or URL")
    p.add_argument("--model", help="a .tflite file or an export directory (default: the shipped model)")
    p.add_argument("--json", action="store_true", help="one JSON object per frame per line on stdout")
    p.add_argument("--annotate", metavar="OUT",
                   help="write the input with boxes and labels: a file for one image/video, else a folder")
    p.add_argument("--min-score", type=float, help="faces scoring below this are labelled 'uncertain'")
    p.add_argument("--backend", default="auto", help="auto, litert, tflite-runtime or tensorflow")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "coral"), help="where the model runs")
    p.add_argument("--threads", type=int, help="interpreter threads (default: the runtime's choice)")
    p.add_argument("--max-frames", type=int, help="stop each input after N frames")
    p.add_argument("--max-faces", type=int, help="classify at most the N largest faces per frame")
    # Detector settings default to DetectorConfig's (None here: the CLI does not import OpenCV to list commands).
    p.add_argument("--detect-width", type=int, help="width faces are searched at (0 = full size)")
    p.add_argument("--min-face", type=int, help="smallest face in full-frame pixels")
    p.add_argument("--cascade", help="Haar cascade file (default: OpenCV's frontal-face cascade)")
    p.add_argument("--redetect-every", type=int, metavar="N",
                   help="video/camera: search the whole frame every N frames, in between only near known faces "
                        "(1 = whole frame every time)")


def _check_inputs(specs: list[str]) -> None:
    """Every input parses and every file exists before the model loads (the one source parser)."""
    from feredge.edge.errors import EdgeError
    from feredge.edge.sources import parse_spec

    for s in specs:
        if parse_spec(s).is_camera:
            continue
        if not Path(s).exists():
            raise EdgeError(f"input not found: {s}")
        if not (Path(s).is_file() or Path(s).is_dir()):
            raise EdgeError(f"input {s} is not a regular file or a folder (a pipe, socket or device); "
                            "cameras are given as /dev/videoN or a URL")


# What OpenCV's mp4v writer can put in a container here.
VIDEO_OUTPUTS = (".mp4", ".avi", ".mov", ".mkv", ".m4v")


def _check_target(target: Path, kind: str, is_file: bool) -> None:
    """Refuse an --annotate target before the model loads: a name OpenCV cannot write, an image
    name for a video input, a folder that cannot be written. ``is_file``: OUT names one file."""
    import cv2

    from feredge.edge.errors import EdgeError
    from feredge.edge.sources import is_image_path

    if is_file and kind == "images" and not cv2.haveImageWriter(str(target)):
        raise EdgeError(f"--annotate {target}: OpenCV cannot write {target.suffix or 'files without an extension'} "
                        "images (use .jpg or .png)")
    if is_file and kind != "images" and target.suffix.lower() not in VIDEO_OUTPUTS:
        what = "an image file name, but the input is a video" if is_image_path(target) else \
            f"not a video OpenCV can write ({target.suffix or 'no extension'})"
        raise EdgeError(f"--annotate {target}: {what}; name a {' / '.join(VIDEO_OUTPUTS)} file or a folder")
    folder = target.parent if is_file else target
    existing = next((d for d in (folder, *folder.parents) if d.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise EdgeError(f"--annotate {target}: cannot write there ({existing} is not a writable folder)")


def _annotate_path(out: Path, source, single: bool) -> Path:
    """One image/video input -> OUT itself when it has an extension; otherwise OUT is a folder."""
    if single and out.suffix:
        return out
    if source.kind == "video":
        return out / (Path(source.name).stem + ".mp4")
    if source.kind == "camera":
        return out / (source.name.replace(":", "").replace("/", "_") + ".mp4")
    return out  # images: the folder; each file is placed below it


def _human(result) -> str:
    f = result.frame
    where = f"{f.source} frame {f.index}" + (f" pts {f.pts:.2f}s" if f.pts is not None else "")
    if not result.faces:
        return f"{where}: no face"
    parts = [f"{x.prediction.label} {x.prediction.score:.2f} at {tuple(x.box)}" for x in result.faces]
    return f"{where}: " + "; ".join(parts)


def _is_single(specs: list[str], spec: str, kind: str) -> bool:
    """One image or video in: an ``--annotate`` name with an extension is that file."""
    return len(specs) == 1 and not (kind == "images" and Path(spec).is_dir())


def _build_pipeline(args: argparse.Namespace):
    from feredge.edge.detect import DetectorConfig, FaceDetector
    from feredge.edge.model import Classifier
    from feredge.edge.pipeline import Pipeline

    clf = Classifier(args.model, backend=args.backend, device=args.device, num_threads=args.threads,
                     min_score=args.min_score)
    given = {"cascade": args.cascade, "detect_width": args.detect_width, "min_face": args.min_face,
             "redetect_every": args.redetect_every}
    det = FaceDetector(DetectorConfig(**{k: v for k, v in given.items() if v is not None}))
    log.debug("model %s", clf.describe())
    return Pipeline(clf, det, max_faces=args.max_faces)


def _write_annotated(res, spec: str, target: Path, writer, single: bool) -> None:
    from feredge.edge.annotate import draw, write_image

    img = draw(res.frame.image, res.faces)
    if writer is not None:
        writer.write(img)
    elif single and target.suffix:
        write_image(target, img)
    else:
        name = Path(res.frame.source)
        rel = name.relative_to(spec) if Path(spec).is_dir() else Path(name.name)
        write_image(target / rel, img)


def _classify_one(args: argparse.Namespace, pipe, spec: str, out: Path | None) -> tuple[int, int]:
    """One input through the pipeline: lines on stdout, the annotated copy written atomically.
    Returns (frames, faces)."""
    from feredge.edge import jsonsafe
    from feredge.edge.annotate import VideoWriter
    from feredge.edge.sources import open_source

    source = open_source(spec)
    single = _is_single(args.inputs, spec, source.kind)
    target = _annotate_path(out, source, single) if out else None
    writer = VideoWriter(target, source.fps) if target and source.kind != "images" else None
    frames = faces = 0
    ok = False
    try:
        for res in pipe.run(source, max_frames=args.max_frames):
            frames += 1
            faces += len(res.faces)
            sys.stdout.write((jsonsafe.dumps(res.to_dict()) if args.json else _human(res)) + "\n")
            sys.stdout.flush()
            if target is not None:
                _write_annotated(res, spec, target, writer, single)
        ok = True
    except KeyboardInterrupt:
        ok = source.kind == "camera"  # a stopped camera recording is complete as it is
        raise
    finally:
        if writer is not None:
            writer.close(ok=ok)
            if ok:
                log.info("wrote %s (%d frames)", writer.path, writer.frames)
        source.close()
    return frames, faces


def run(args: argparse.Namespace) -> int:
    from feredge.edge.errors import EdgeError
    from feredge.edge.sources import input_kind

    if args.max_frames is not None and args.max_frames < 1:
        raise EdgeError("--max-frames must be >= 1")
    _check_inputs(args.inputs)
    out = Path(args.annotate) if args.annotate else None
    if out is not None:
        for spec in args.inputs:
            kind = input_kind(spec)
            _check_target(out, kind, is_file=_is_single(args.inputs, spec, kind) and bool(out.suffix))
    pipe = _build_pipeline(args)
    frames = faces = 0
    t0 = time.perf_counter()
    for spec in args.inputs:
        n, k = _classify_one(args, pipe, spec, out)
        frames, faces = frames + n, faces + k
    dt = time.perf_counter() - t0
    clf = pipe.classifier
    log.info("%d frame(s), %d face(s) in %.2f s (%.1f frames/s) on %s/%s; %d full-frame face searches",
             frames, faces, dt, frames / dt if dt > 0 else 0.0, clf.backend_name, clf.device, pipe.full_searches)
    if frames == 0:
        # Only unreadable files, or a video without one decodable frame: nothing was classified.
        raise EdgeError(f"no frame could be read from {', '.join(args.inputs)[:200]}; nothing was classified")
    return 0
