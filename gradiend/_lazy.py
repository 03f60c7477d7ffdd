"""Lazy package exports (PEP 562): a package names its public objects without importing them.

`import gradiend` stays cheap (no transformers, datasets, pandas or matplotlib) because each
public name is imported from its defining submodule on first access only.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(namespace: dict[str, Any],
                 exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Return a module `__getattr__` and `__dir__` over a name → defining-submodule table.

    `namespace` is the package's `globals()`. A resolved name is stored there, so each name is
    imported at most once and later lookups bypass `__getattr__`.
    """
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        module_name = exports.get(name)
        if module_name is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module_name), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
