"""Data: the task registry (tasks.py: one YAML per data set, validated into a TaskSpec), loading and checking
every row and tokenising once (loading.py), and the task sampler that picks each batch's task (sampler.py).

May import: core, kinds (each head kind checks and encodes its own rows).
"""
