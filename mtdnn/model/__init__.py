"""The model: the shared encoder with one head per task (multitask.py), building the encoder and tokenizer
(encoders.py), and the adapter methods (adapters/, one module each).

May import: core, kinds, data (the task specs).
"""
