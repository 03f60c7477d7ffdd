"""`import gradiend` is cheap and lazy, yet every public name resolves to its defining object."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

import gradiend
from gradiend import _EXPORTS

HEAVY = ("transformers", "datasets", "pandas", "matplotlib")


def _fresh(code: str) -> str:
    """stdout of `code` run in a fresh interpreter (nothing imported yet)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def test_import_leaves_heavy_libraries_out() -> None:
    code = f"import json, sys, gradiend; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    assert json.loads(_fresh(code)) == []


def test_from_import_of_every_public_name_works_in_a_fresh_process() -> None:
    names = [n for n in gradiend.__all__ if n != "__version__"]
    code = f"from gradiend import {', '.join(names)}, __version__; print(__version__)"
    assert _fresh(code).strip() == gradiend.__version__


@pytest.mark.parametrize("name", [n for n in gradiend.__all__ if n != "__version__"])
def test_public_name_is_its_defining_modules_object(name: str) -> None:
    assert getattr(gradiend, name) is getattr(importlib.import_module(_EXPORTS[name]), name)


def test_every_public_name_has_a_defining_module() -> None:
    assert set(gradiend.__all__) - {"__version__"} == set(_EXPORTS)


def test_version_comes_from_the_version_module() -> None:
    from gradiend._version import __version__

    assert gradiend.__version__ == __version__


def test_dir_lists_the_public_names() -> None:
    assert set(gradiend.__all__) <= set(dir(gradiend))


def test_unknown_attribute_raises_attribute_error_naming_the_module() -> None:
    with pytest.raises(AttributeError, match=r"module 'gradiend' has no attribute 'no_such_name'"):
        gradiend.no_such_name  # noqa: B018


@pytest.mark.parametrize(("package", "names"), [
    ("gradiend.trainer", ("TextPredictionTrainer", "Trainer", "TrainingCallback", "PositiveTrainerSuite",
                          "PositiveFeatureDefinition", "SymmetricTrainerSuite", "TrainerCollection")),
    ("gradiend.trainer.text.prediction", ("TextPredictionConfig", "TextPredictionTrainer")),
])
def test_subpackages_export_lazily_too(package: str, names: tuple[str, ...]) -> None:
    module = importlib.import_module(package)
    assert set(module.__all__) == set(names) and set(names) <= set(dir(module))
    for name in names:
        assert getattr(module, name) is getattr(gradiend, name)
    with pytest.raises(AttributeError, match=package):
        module.no_such_name  # noqa: B018
