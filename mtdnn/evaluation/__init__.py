"""Evaluation: a model over a split, predictions for every row and metrics where gold labels exist
(engine.py); the training loop, evaluate, predict and the distiller use it.

May import: core, kinds, data, model.
"""
