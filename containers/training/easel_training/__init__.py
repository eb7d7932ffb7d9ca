"""Easel training job: DreamBooth and LoRA fine-tuning on the SageMaker training contract."""

__version__ = "0.1.0"
