"""Easel inference server: Stable Diffusion behind the SageMaker serving contract."""

__version__ = "0.1.0"
