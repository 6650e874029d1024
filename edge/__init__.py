"""feredge device package: model contract, preprocessing, inference, detection, daemon.

Never imports TensorFlow or Keras, so it installs on a Raspberry Pi with
``pip install 'feredge[edge]'``.
"""

import os

# OpenCV's own cap on decoded pixels (default 1 G), for formats feredge.edge.sources.images cannot size from
# their header; read when cv2 first decodes, so set before any import of cv2 does.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(64_000_000))
