"""Phase 2 of an export: a loaded Keras model becomes int8 TFLite, ONNX and an Edge TPU check."""
