"""Easel's contracts: every shape that crosses a process, defined once (pydantic only).

Each module owns one contract; the README beside this package lists them. Import the module you
need (``from easel_contracts import naming``); nothing here talks to AWS or reads the environment.
"""
