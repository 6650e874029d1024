"""Daemon configuration: TOML -> dataclasses, unknown keys with their line, overrides, secrets."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from feredge.edge.cli.main import main
from feredge.edge.daemon import config as C

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "systemd" / "config.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.toml"
    p.write_text(textwrap.dedent(text).lstrip())
    return p


def test_defaults_without_a_file():
    cfg = C.load(None)
    assert cfg.http.bind == "127.0.0.1" and cfg.http.port == 8800
    assert cfg.http.snapshots is False and cfg.http.mjpeg is False  # privacy: no frames kept
    assert [c.name for c in cfg.camera] == ["cam0"] and cfg.camera[0].source == "auto"
    assert cfg.mqtt.enabled is False and cfg.jsonl.path == "-"


def test_values_are_read_and_typed(tmp_path):
    p = write(tmp_path, """
        [model]
        path = "/m/fer.tflite"
        num_threads = 2

        [[camera]]
        name = "front"
        source = "/dev/video2"
        fps = 10          # an int is accepted for a float

        [[camera]]
        name = "back"
        source = "rtsp://cam/stream"

        [mqtt]
        enabled = true
        host = "broker.lan"
        """)
    cfg = C.load(p)
    assert cfg.model.path == "/m/fer.tflite" and cfg.model.num_threads == 2
    assert [(c.name, c.source) for c in cfg.camera] == [("front", "/dev/video2"), ("back", "rtsp://cam/stream")]
    assert cfg.camera[0].fps == 10.0 and isinstance(cfg.camera[0].fps, float)
    assert cfg.mqtt.enabled and cfg.mqtt.host == "broker.lan"
    assert cfg.source_path == str(p)


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ("[mqtt]\nenabled = true\nhots = 'x'\n", "mqtt.hots", 3),
        ("colour = 1\n", "colour", 1),
        ("[model]\npath = 'x'\n\n[detectr]\nmin_face = 3\n", "detectr", 4),
        # the second [[camera]] table: the line must be the one in that table, not the first
        ("[[camera]]\nname = 'a'\nfps = 3\n\n[[camera]]\nname = 'b'\nfsp = 3\n", "camera.fsp", 7),
        ("[[camera]]\nname = 'a'\n\n[[camera]]\nname = 'b'\nsorce = 'x'\n", "camera.sorce", 6),
        # a key inside a multi-line string must not be mistaken for the offending key
        ('[http]\ntoken = """\nport = 1\n"""\nprot = 2\n', "http.prot", 5),
        # dotted keys
        ("mqtt.hosst = 'x'\n", "mqtt.hosst", 1),
    ],
)
def test_unknown_key_names_key_and_line(tmp_path, text, key, line):
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(C.ConfigError) as e:
        C.load(p)
    msg = str(e.value)
    assert f"'{key}'" in msg and f"{p} line {line}:" in msg, msg
    assert "\n" not in msg


def test_wrong_type_names_key_line_and_type(tmp_path):
    p = write(tmp_path, """
        [http]
        port = "8800"
        """)
    with pytest.raises(C.ConfigError, match=r"line 2: http.port must be an integer, got str '8800'"):
        C.load(p)


def test_invalid_toml_and_missing_file(tmp_path):
    p = write(tmp_path, "[mqtt\nhost = 1\n")
    with pytest.raises(C.ConfigError, match="invalid TOML"):
        C.load(p)
    with pytest.raises(C.ConfigError, match="config file not found"):
        C.load(tmp_path / "nope.toml")


def test_cross_field_validation(tmp_path):
    cases = {
        "[[camera]]\nname = 'a b'\n": "line 2: camera.name = 'a b': must be only letters",
        "[[camera]]\nname = 'a'\n[[camera]]\nname = 'a'\n": "must be unique",
        "[[camera]]\npace = 'slow'\n": "line 2: camera.pace = 'slow': must be 'realtime' or 'fast'",
        "[tracking]\nsmoothing = -1\n": "line 2: tracking.smoothing = -1.0: must be >= 0",
        "[tracking]\niou = 3.0\n": "line 2: tracking.iou = 3.0: must be between 0 and 1",
        "[[camera]]\nname = 'a'\n[[camera]]\nname = 'b'\nfps = 0\n": "line 5: camera.fps = 0.0: must be > 0",
        "[tracking]\nema = 0.35\n": "line 2: 'tracking.ema' was replaced: use tracking.smoothing",
        "[jsonl]\nmode = 'some'\n": "jsonl.mode",
        "[mqtt]\nenabled = true\nbase_topic = 'a/#'\n": "line 3: mqtt.base_topic = 'a/#': must be a topic without #",
        "[model]\ndevice = 'tpu'\n": "model.device",
    }
    for text, fragment in cases.items():
        p = tmp_path / "c.toml"
        p.write_text(text)
        with pytest.raises(C.ConfigError, match=fragment):
            C.load(p)


def test_http_elsewhere_than_loopback_requires_a_token(tmp_path, monkeypatch):
    monkeypatch.delenv("FEREDGE_HTTP_TOKEN", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    p = write(tmp_path, """
        [http]
        bind = "0.0.0.0"
        """)
    with pytest.raises(C.ConfigError, match="a token is required"):
        C.load(p)
    monkeypatch.setenv("FEREDGE_HTTP_TOKEN", "s3cret")
    assert C.load(p).http_token() == "s3cret"
    for loopback in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        monkeypatch.delenv("FEREDGE_HTTP_TOKEN", raising=False)
        p.write_text(f'[http]\nbind = "{loopback}"\n')
        assert C.load(p).http.bind == loopback


def test_secrets_credentials_beat_environment_beat_file(tmp_path, monkeypatch):
    p = write(tmp_path, """
        [mqtt]
        enabled = true
        username = "u"
        password = "from-file"
        """)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv("FEREDGE_MQTT_PASSWORD", raising=False)
    assert C.load(p).mqtt_password() == "from-file"
    monkeypatch.setenv("FEREDGE_MQTT_PASSWORD", "from-env")
    assert C.load(p).mqtt_password() == "from-env"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt_password").write_text("from-credential\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert C.load(p).mqtt_password() == "from-credential"


def test_overrides(tmp_path):
    p = write(tmp_path, """
        [[camera]]
        name = "a"
        [[camera]]
        name = "b"
        """)
    cfg = C.load(p, {"camera.pace": "fast", "camera.1.source": "/dev/video1", "mqtt.port": 1884,
                     "tracking.smoothing": 1})
    assert [c.pace for c in cfg.camera] == ["fast", "fast"]
    assert [c.source for c in cfg.camera] == ["auto", "/dev/video1"]
    assert cfg.mqtt.port == 1884 and cfg.tracking.smoothing == 1.0
    with pytest.raises(C.ConfigError, match="unknown key 'hots'"):
        C.load(p, {"mqtt.hots": "x"})
    with pytest.raises(C.ConfigError, match="there is no camera 5"):
        C.load(p, {"camera.5.source": "x"})
    with pytest.raises(C.ConfigError, match="must be an integer"):
        C.load(p, {"mqtt.port": "abc"})


def test_example_config_is_valid_and_documents_every_key():
    cfg = C.load(EXAMPLE)
    assert cfg.camera[0].loop is True
    text = EXAMPLE.read_text()
    import dataclasses

    for section in ("model", "detector", "tracking", "daemon", "jsonl", "mqtt", "http"):
        for f in dataclasses.fields(getattr(cfg, section)):
            assert f.name in text, f"{section}.{f.name} is not in the example config"
    for f in dataclasses.fields(C.CameraConfig):
        assert f.name in text, f"camera.{f.name} is not in the example config"


# ---- through the CLI: one line, exit 2 ----------------------------------------------------

def test_cli_unknown_key_exit_2(tmp_path, capsys):
    p = write(tmp_path, """
        [jsonl]
        enabled = true
        rotate = 3
        """)
    assert main(["run", "--check", "--config", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"feredge run: error: {p} line 3: unknown key 'jsonl.rotate' "
                   "(known in [jsonl]: enabled, path, max_bytes, backups, mode)")


def test_cli_bad_set_and_missing_source(tmp_path, capsys):
    assert main(["run", "--check", "--set", "tracking.smoothing"]) == 2
    assert "use SECTION.KEY=VALUE" in capsys.readouterr().err
    assert main(["run", "--check", "--source", str(tmp_path / "missing.mp4")]) == 2
    err = capsys.readouterr().err
    assert "missing.mp4" in err and "is not a file, a device, a URL or 'auto'" in err


def test_cli_http_on_all_interfaces_without_token_exit_2(capsys, monkeypatch):
    monkeypatch.delenv("FEREDGE_HTTP_TOKEN", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert main(["run", "--check", "--set", "http.bind='0.0.0.0'"]) == 2
    assert "a token is required" in capsys.readouterr().err


def test_relative_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    sub = tmp_path / "etc"
    sub.mkdir()
    p = sub / "config.toml"
    p.write_text('[model]\npath = "models/fer"\n[jsonl]\npath = "out/f.jsonl"\n'
                 '[[camera]]\nsource = "clips/a.mp4"\n[[camera]]\nname = "b"\nsource = "/dev/video1"\n'
                 '[[camera]]\nname = "c"\nsource = "rtsp://x/y"\n')
    monkeypatch.chdir(tmp_path)
    cfg = C.load(p, {"camera.2.source": "rel.mp4"})
    assert cfg.model.path == str(sub / "models/fer") and cfg.jsonl.path == str(sub / "out/f.jsonl")
    assert [c.source for c in cfg.camera] == [str(sub / "clips/a.mp4"), "/dev/video1", "rel.mp4"]


def test_model_backend_is_refused_at_load(tmp_path):
    """A misspelt backend fails when the config is read, naming the line and the choices, not
    when the model loads in every camera thread."""
    p = tmp_path / "c.toml"
    p.write_text("[model]\nbackend = 'tpu'\n")
    with pytest.raises(C.ConfigError, match=r"c\.toml line 2: model\.backend = 'tpu': "
                                            r"must be auto, litert, tflite-runtime or tensorflow$"):
        C.load(p)
    with pytest.raises(C.ConfigError, match=r"^override model\.backend: model\.backend = 'tf-lite': must be auto"):
        C.load(None, {"model.backend": "tf-lite"})
    for name in ("auto", "litert", "tflite-runtime", "tensorflow", "tflite"):  # "tflite": an alias
        p.write_text(f"[model]\nbackend = '{name}'\n")
        assert C.load(p).model.backend == name


def test_backend_choices_are_the_registry():
    from feredge.edge import backends

    assert set(C.BACKEND_NAMES) == {"auto", *backends.BACKENDS, *backends.ALIASES}


def test_every_number_in_the_config_has_its_rule_beside_it():
    """A numeric field added without a range would take any value; its rule lives on the field."""
    import dataclasses
    import typing

    missing, numbers = [], 0
    for section, _, table in C.Config()._tables():
        hints = typing.get_type_hints(type(table))
        for f in dataclasses.fields(table):
            if {int, float} & set(typing.get_args(hints[f.name]) or (hints[f.name],)):
                numbers += 1
                if "rule" not in f.metadata:
                    missing.append(f"{section}.{f.name}")
    assert numbers > 20 and not missing, f"fields without a rule: {missing}"
