"""The run folder: its files and its lock (folder.py), checkpoints written whole, rotated, the best one
named, weights read and written (checkpoints.py), and every RNG's state (rng.py).

May import: core, data (task specs saved with the run), model (the weights a checkpoint holds).
"""
