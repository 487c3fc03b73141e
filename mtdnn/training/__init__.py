"""Training: the `Run` a training run owns (run.py), its checks (checks.py, command_line.py), building it
(build.py), the loop read top to bottom (loop.py), optimizer and schedule, resume, staged training, what a run
reports while it trains (tracking.py) and after (summary.py), sweeps.

May import: everything below it (distill, serving, evaluation, runs, regularizers, balancers, model, data,
kinds, core); not export, and no command module.
"""
