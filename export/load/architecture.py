"""``--architecture``: a Keras 2 JSON (``model.to_json()``, translated like a full model's config)
or ``builder.py:function`` returning a Keras 3 model, for files that hold weights only."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

from feredge.edge.errors import one_line
from feredge.export.errors import ExportError
from feredge.export.load.common import refuse_lambdas
from feredge.export.load.legacy import Repairs, build_from_config, is_channels_first, translate_model_config


def model_from_architecture(architecture: str, trust_model: bool, repairs: Repairs) -> tuple[Any, str, bool]:
    """(model, description, whether the architecture was channels-first and turned channels-last)."""
    import keras

    arch = architecture.strip()
    if arch.startswith("{"):
        cfg = _parse_arch_json(arch, "--architecture")
        return (_model_from_json_cfg(cfg, "--architecture", trust_model, repairs), "json architecture",
                is_channels_first(cfg))
    path_part, _, func = arch.rpartition(":")
    if path_part.endswith(".py") and func:
        return _model_from_builder(Path(path_part), func, keras), f"builder {Path(path_part).name}:{func}", False
    p = Path(arch)
    if arch.endswith(".py"):
        raise ExportError(f"--architecture {arch}: say which function builds the model (path/to/builder.py:function)")
    if not p.is_file():
        raise ExportError(f"architecture file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ExportError(f"cannot read architecture {p}: {e}") from None
    cfg = _parse_arch_json(text, str(p))
    return _model_from_json_cfg(cfg, p.name, trust_model, repairs), "json architecture", is_channels_first(cfg)


def _parse_arch_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ExportError(f"architecture {where} is not valid JSON ({e})") from None


def _model_from_json_cfg(cfg: Any, where: str, trust_model: bool, repairs: Repairs) -> Any:
    if not isinstance(cfg, dict) or "class_name" not in cfg:
        raise ExportError(f"architecture {where} is not a Keras model JSON (as written by model.to_json())")
    refuse_lambdas(cfg, where, trust_model)
    return build_from_config(translate_model_config(cfg, repairs), trust_model=trust_model)


def _model_from_builder(path: Path, func: str, keras: Any) -> Any:
    if not path.is_file():
        raise ExportError(f"architecture builder not found: {path}")
    mod_name = f"feredge_builder_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ExportError(f"cannot import architecture builder {path}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's code; report it in one line
        raise ExportError(f"importing builder {path} failed: {one_line(e)}") from None
    fn = getattr(module, func, None)
    if not callable(fn):
        raise ExportError(f"builder {path} has no function '{func}'")
    try:
        model = fn()
    except Exception as e:
        raise ExportError(f"builder {path.name}:{func}() failed: {one_line(e)}") from None
    if not isinstance(model, keras.Model):
        hint = " (a tf_keras/Keras 2 model? build it with `import keras`, Keras 3)" if "tf_keras" in type(
            model).__module__ else ""
        raise ExportError(f"builder {path.name}:{func}() returned {type(model).__name__}, not a Keras 3 model{hint}")
    return model

