"""Easel tests (a regular package, so an installed top-level `tests` cannot shadow it)."""
