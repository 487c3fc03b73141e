"""mtdnn: config-driven multi-task NLU fine-tuning on a shared HuggingFace encoder."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `from mtdnn import load_run` without importing torch and transformers for every `import mtdnn`
    if name == "load_run":
        from mtdnn.serving.predictor import load_run

        return load_run
    raise AttributeError(f"module 'mtdnn' has no attribute {name!r}")
