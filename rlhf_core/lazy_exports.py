"""Lazy public names for the package ``__init__`` files: each is imported from its module on first access.

So ``import rlhf_core`` (or one sub-package) stays cheap, importing one trainer never imports (or breaks on)
another, and nothing pulls in prefect or mlflow.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, modules: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` of ``package``; ``modules`` maps a module to its space-separated names.

    Use in an ``__init__.py``: ``__getattr__, __dir__, __all__ = lazy_exports(__name__, {"pkg.mod": "A b"})``.
    A resolved name is cached in the package's namespace, so its import runs once. A module may be a package
    that exports the name lazily itself.
    """
    exports = {name: module for module, names in modules.items() for name in names.split()}

    def __getattr__(name: str) -> Any:
        module_name = exports.get(name)
        if module_name is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module_name), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__, sorted(exports)
