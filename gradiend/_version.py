"""The library version: the single source read by the package, the CLI and the build."""

__version__ = "0.1.0"
