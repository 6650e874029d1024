"""feredge workstation package: load (legacy) Keras models, calibrate, convert, check parity.

May import TensorFlow; modules import it lazily so ``feredge --help`` stays fast.
"""
