"""feredge device package: model contract, preprocessing, inference, detection, daemon.

Never imports TensorFlow or Keras, so it installs on a Raspberry Pi with
``pip install 'feredge[edge]'``.
"""

__version__ = "0.1.0"
