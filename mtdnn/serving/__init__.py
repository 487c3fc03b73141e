"""Serving a trained run: opening a run folder or an ONNX export (loading.py: `open_run`), the Python API
(predictor.py: `mtdnn.load_run(...).predict`), ONNX Runtime as a backend (onnx.py), and benchmark submission
files (submission.py).

May import: core, kinds, data, model, runs, evaluation.
"""
