"""minicpm-recipes: correct-on-the-first-try LLaMA-Factory fine-tuning recipes."""

__version__ = "0.1.0"
