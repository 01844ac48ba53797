"""The public surface agrees with itself: ``__all__``, the lazy export map, the error tree.

``kvmlab/__init__.py`` lists its names twice (``__all__`` and the lazy ``_HOMES`` map) and
``kvmlab/errors.py`` draws its tree in a docstring; each copy can drift from the code. These
tests read all of them and the classes themselves, so a new error defined outside
:mod:`kvmlab.errors`, an export that is not importable, a tree line with the wrong parent or
a display formatter registered by a class path that moved fails here, not in a user's notebook.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import pytest

import kvmlab
from kvmlab import errors
from kvmlab.display import FORMATTERS


def kvmlab_modules() -> list[str]:
    """Every module of the library (the fake kvm, a separate stdlib program, left out)."""
    names = []
    for info in pkgutil.walk_packages(kvmlab.__path__, prefix="kvmlab."):
        if info.name.startswith("kvmlab.fake") or info.name.endswith("__main__"):
            continue
        names.append(info.name)
    return names


def drawn_tree() -> dict[str, str]:
    """``{class: parent}`` as the docstring of :mod:`kvmlab.errors` draws it."""
    parents: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in (errors.__doc__ or "").splitlines():
        match = re.match(r"^[\s|+-]*([A-Z]\w*Error)\b", line)
        if match is None:
            continue
        column, name = match.start(1), match.group(1)
        while stack and stack[-1][0] >= column:
            stack.pop()
        parents[name] = stack[-1][1] if stack else ""
        stack.append((column, name))
    return parents


def test_every_exported_name_imports() -> None:
    for name in kvmlab.__all__:
        assert getattr(kvmlab, name) is not None, name


def test_the_lazy_map_and_all_agree() -> None:
    homes = kvmlab._HOMES
    errors_exported = {name for name in kvmlab.__all__ if name.endswith("Error")}
    others = set(kvmlab.__all__) - errors_exported - {"__version__"}
    assert set(homes) == others
    for name, home in homes.items():
        assert getattr(importlib.import_module(f"kvmlab.{home}"), name) is getattr(kvmlab, name)


def test_every_error_of_the_tree_is_exported_from_kvmlab() -> None:
    defined = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == "kvmlab.errors"
    }
    assert set(errors.__all__) == defined
    assert {name for name in kvmlab.__all__ if name.endswith("Error")} == defined
    assert all(getattr(kvmlab, name) is getattr(errors, name) for name in defined)


def test_the_drawn_tree_is_the_class_tree() -> None:
    drawn = drawn_tree()
    assert set(drawn) == set(errors.__all__)
    for name, parent in drawn.items():
        cls = getattr(errors, name)
        if parent:
            assert parent in [base.__name__ for base in cls.__bases__], (name, parent)
        else:
            assert cls.__bases__ == (Exception,), name


def test_the_tree_reader_sees_a_wrong_parent() -> None:
    # The check above is only as good as this parser: a moved line must change the result.
    doc = errors.__doc__ or ""
    moved = doc.replace("     |    +-- InstanceError", "     +-- InstanceError", 1)
    assert moved != doc
    original, errors.__doc__ = errors.__doc__, moved
    try:
        assert drawn_tree()["InstanceError"] == "KvmlabError"
    finally:
        errors.__doc__ = original


@pytest.mark.parametrize("module_name", kvmlab_modules())
def test_no_exception_is_defined_outside_the_tree(module_name: str) -> None:
    module = importlib.import_module(module_name)
    strays = [
        name
        for name, value in vars(module).items()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == module_name
        and module_name != "kvmlab.errors"
    ]
    assert strays == [], f"{module_name} defines {strays}: define them in kvmlab.errors"


@pytest.mark.parametrize(("module_name", "class_name"), [(m, c) for m, c, *_ in FORMATTERS])
def test_display_formatters_name_real_classes(module_name: str, class_name: str) -> None:
    # IPython registers these by name and silently never calls a renderer whose path is stale.
    cls = getattr(importlib.import_module(module_name), class_name)
    assert inspect.isclass(cls)
    assert (cls.__module__, cls.__qualname__) == (module_name, class_name)


def test_version_comes_from_the_package_metadata() -> None:
    from importlib.metadata import version  # noqa: PLC0415

    assert kvmlab.__version__ == version("kvmlab")
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", kvmlab.__version__)
