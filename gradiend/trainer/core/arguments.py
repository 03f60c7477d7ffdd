"""`TrainingArguments` at its reference import path."""

from gradiend.arguments import TrainingArguments

__all__ = ["TrainingArguments"]
