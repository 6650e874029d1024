"""Phase 1 of an export: every way a Keras model arrives, loaded into Keras 3 and repaired in memory.

One loader per way a model arrives; :func:`feredge.export.load.model.load_model` picks one and
finishes the job with the steps every model gets (:mod:`feredge.export.load.steps`).
"""
