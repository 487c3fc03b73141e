"""The core every other package stands on: typed run configuration (config.py), the one error type and its
one-line messages (errors.py), Ctrl-C at safe points (interrupts.py), what every command shares (commands.py:
key=value arguments, the error wrapper), atomic files (atomic.py), plug-in discovery (plugins.py), typed
dataclasses from YAML (typed.py), shipped paths, package-registry artifacts, the broken line of a data file,
and torchrun (distributed.py).

May import: nothing of mtdnn outside core (the bottom layer; pyproject.toml's import-linter contract).
"""
