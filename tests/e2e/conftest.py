"""Fixtures of the end-to-end tests (the helpers live in e2e_stack.py, importable by the tests)."""

from e2e_stack import stack  # noqa: F401  (registers the module-scoped `stack` fixture)
