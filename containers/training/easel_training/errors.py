"""Error types whose message is meant for the person who submitted the job."""


class TrainingInputError(Exception):
    """A problem with the job's inputs (hyperparameters, channels, images, base model).

    The message is written to ``output/failure`` as is, so it must say what is wrong and
    what to change, without tracebacks or secrets.
    """


class TrainingRuntimeError(Exception):
    """Training started but could not finish (non-finite loss, device error, ...)."""
