"""Easel portal (web UI + A1111-compatible API). The portal issue builds it out."""

__version__ = "0.1.0"
