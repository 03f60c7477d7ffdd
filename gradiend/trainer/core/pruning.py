"""Pruning configs at their reference import path."""

from gradiend.arguments import PostPruneConfig, PrePruneConfig

__all__ = ["PostPruneConfig", "PrePruneConfig"]
