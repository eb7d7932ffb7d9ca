"""The SageMaker stand-in: SageMaker and SageMaker-runtime APIs over local processes."""
