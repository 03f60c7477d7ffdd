"""Core configuration objects (reference import paths)."""
