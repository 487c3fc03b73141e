"""mtdnn: config-driven multi-task NLU fine-tuning on a shared HuggingFace encoder."""

__version__ = "0.1.0"
