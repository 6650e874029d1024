"""The desktop reference beside the device artifacts: the loaded model, saved as Keras reads it
back (``feredge parity`` compares the artifacts with it)."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from feredge.edge.errors import one_line
from feredge.export.convert.formats import Artifact
from feredge.export.load.steps import is_tf_keras

if TYPE_CHECKING:
    from feredge.export.convert.formats import ConvertJob


def convert(job: ConvertJob) -> list[Artifact]:
    """``<name>.keras``; a tf_keras model (Keras 3 cannot build it) is kept as Keras 2's ``.h5``,
    which feredge parity loads back the same way. A model that refuses to be saved (a wrapped
    SavedModel) is a warning, not a failed export: the device artifacts are still useful."""
    model, name = job.desktop.model, job.contract.name
    tf_keras_model = is_tf_keras(model)
    f_keras = job.built.stage / (f"{name}.h5" if tf_keras_model else f"{name}.keras")
    try:
        with warnings.catch_warnings():  # tf_keras calls its own .h5 "legacy": it is what Keras 2 reads
            warnings.simplefilter("ignore", UserWarning)
            model.save(str(f_keras), **({"save_format": "h5"} if tf_keras_model else {}))
    except Exception as e:
        job.run.warn(f"could not save the desktop model as {f_keras.name}: {one_line(e, 160)}")
    job.run.ph.done("save_keras")
    return [Artifact(f_keras, "keras")]
