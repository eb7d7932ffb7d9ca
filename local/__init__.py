"""Easel's local AWS: an AWS emulator (moto server) plus a SageMaker stand-in.

Start it with ``python -m local up`` or, from Python, with
``local.runtime.LocalAws(state_dir)`` used as a context manager.
"""
