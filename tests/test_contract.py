"""The model contract and the one preprocessing module (no TensorFlow needed)."""

from __future__ import annotations

import json
import zipfile

import cv2
import numpy as np
import pytest

from feredge.edge import contract as C
from feredge.edge import preprocess as P
from feredge.edge.errors import ContractError


def make_contract(**input_kw) -> C.Contract:
    return C.Contract(
        name="t",
        labels=list(C.FER2013_LABELS),
        input=C.InputSpec(**input_kw),
        quantization={"t.int8.tflite": {"input": C.QuantParams("int8", 1 / 255, -128),
                                        "output": C.QuantParams("int8", 1 / 256, -128)}},
        provenance={"source": {"sha256": "ab"}},
    ).validate()


def test_json_roundtrip_preserves_every_field(tmp_path):
    c = make_contract(height=64, width=64, normalize=C.Normalize(1 / 127.5, -1.0), face_margin=0.1)
    c.output.temperature = 1.7
    c.save(tmp_path / "t.json")
    back = C.Contract.load(tmp_path / "t.json")
    assert back == c
    assert json.loads((tmp_path / "t.json").read_text())["schema"] == C.SCHEMA


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"schema": "other/9"}, "unsupported contract schema"),
        ({"labels": []}, "no labels"),
        ({"input": {"height": 48, "width": 48, "channels": 2}}, "not an image"),
        ({"input": {"channels": 3, "color": "gray"}}, "does not fit"),
        ({"input": {"resize": "lanczos"}}, "resize"),
        ({"output": {"activation": "softmax", "temperature": 0}}, "temperature"),
        ({"name": None, "labels": None}, "malformed"),
    ],
)
def test_invalid_contracts_are_refused_with_a_reason(patch, message):
    d = make_contract().to_dict()
    d.update(patch)
    with pytest.raises(ContractError, match=message):
        C.Contract.from_dict(d)


def test_not_json_is_a_contract_error():
    with pytest.raises(ContractError, match="not valid JSON"):
        C.Contract.from_json(b"\x00garbage")


@pytest.mark.parametrize("text, expected", [
    ("unit", (1 / 255, 0.0)), ("symmetric", (1 / 127.5, -1.0)), ("raw", (1.0, 0.0)), ("0.5,-3", (0.5, -3.0)),
])
def test_parse_normalize(text, expected):
    assert C.parse_normalize(text) == pytest.approx(expected)


def test_parse_normalize_rejects_nonsense():
    with pytest.raises(ContractError, match="--normalize"):
        C.parse_normalize("half")


def test_tflite_embed_extract_and_reembed_do_not_stack(tmp_path):
    art = tmp_path / "t.int8.tflite"
    payload = b"TFL3" + bytes(range(256)) * 4
    art.write_bytes(payload)
    c = make_contract()
    C.embed(art, c)
    C.embed(art, c)  # re-embedding replaces, never stacks
    with zipfile.ZipFile(art) as zf:
        assert zf.namelist() == [C.EMBED_NAME]
    assert art.read_bytes().startswith(payload)
    got = C.extract(art)
    assert got is not None and got.labels == c.labels
    assert got.artifacts == {}  # hashes live in the sidecar only


def test_resolve_checks_sha256_against_sidecar(tmp_path):
    art = tmp_path / "t.int8.tflite"
    art.write_bytes(b"TFL3" + b"\x01" * 100)
    c = make_contract()
    C.embed(art, c)
    c.record_artifact(art)
    c.save(tmp_path / "t.json")
    path, got = C.resolve(tmp_path)
    assert path == art and got.artifacts[art.name]["sha256"]
    data = bytearray(art.read_bytes())
    data[10] ^= 0xFF
    art.write_bytes(bytes(data))
    with pytest.raises(ContractError, match="does not match its contract"):
        C.resolve(art)


def test_resolve_without_any_contract_says_what_to_do(tmp_path):
    art = tmp_path / "plain.tflite"
    art.write_bytes(b"TFL3")
    with pytest.raises(ContractError, match="feredge export"):
        C.resolve(art)
    with pytest.raises(ContractError, match="not found"):
        C.resolve(tmp_path / "missing.tflite")


def test_prepare_gray_and_rgb_models_from_bgr_and_gray_inputs():
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (100, 80, 3), dtype=np.uint8)
    gray_spec = make_contract(height=48, width=48, normalize=C.Normalize(1 / 127.5, -1.0)).input
    x = P.prepare(bgr, gray_spec)
    assert x.shape == (48, 48, 1) and x.dtype == np.float32
    expected = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), (48, 48), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(x[:, :, 0], expected / 127.5 - 1.0, atol=1e-6)

    rgb_spec = make_contract(height=32, width=32, channels=3, color="rgb").input
    gray = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    y = P.prepare(gray, rgb_spec)
    assert y.shape == (32, 32, 3)
    np.testing.assert_allclose(y[:, :, 0], gray / 255.0, atol=1e-6)  # grey -> RGB replicates
    z = P.prepare(bgr[:32, :32], rgb_spec)
    np.testing.assert_allclose(z[:, :, 0], bgr[:32, :32, 2] / 255.0, atol=1e-6)  # R comes from BGR's last
    assert P.prepare_batch([bgr, gray], gray_spec).shape == (2, 48, 48, 1)


def test_quantize_rounds_clips_and_roundtrips():
    q = C.QuantParams("int8", 0.1, -3)
    x = np.array([-100.0, -0.04, 0.06, 1.0, 100.0], np.float32)
    y = P.quantize(x, q)
    assert y.dtype == np.int8
    assert y.tolist() == [-128, -3, -2, 7, 127]
    np.testing.assert_allclose(P.dequantize(y[1:4], q), [0.0, 0.1, 1.0], atol=1e-6)
    u = P.quantize(np.array([0.0, 1.0], np.float32), C.QuantParams("uint8", 1 / 255, 0))
    assert u.dtype == np.uint8 and u.tolist() == [0, 255]


def test_crop_face_grows_by_margin_and_clips():
    frame = np.zeros((100, 200, 3), np.uint8)
    assert P.crop_face(frame, (50, 20, 40, 40), 0.0).shape == (40, 40, 3)
    assert P.crop_face(frame, (50, 20, 40, 40), 0.25).shape == (60, 60, 3)
    assert P.crop_face(frame, (0, 0, 40, 40), 0.5).shape == (60, 60, 3)  # clipped at the border


def test_probabilities_with_temperature():
    z = np.array([2.0, 1.0, 0.0])
    p1 = P.probabilities(z, "logits", 1.0)
    np.testing.assert_allclose(p1, np.exp(z) / np.exp(z).sum(), rtol=1e-6)
    p2 = P.probabilities(z, "logits", 2.0)
    assert p2.max() < p1.max() and p2.sum() == pytest.approx(1.0)
    # softmax outputs: T=1 is the identity, T applies to log p
    np.testing.assert_allclose(P.probabilities(p1, "softmax", 1.0), p1, rtol=1e-6)
    np.testing.assert_allclose(P.probabilities(p1, "softmax", 2.0), p2, rtol=1e-5)
    s = P.probabilities(np.array([0.9]), "sigmoid", 1.0)
    assert s.shape == (1,) and s[0] == pytest.approx(0.9, abs=1e-6)
