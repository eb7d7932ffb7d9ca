"""Errors in the shapes AWS returns them, so botocore raises ClientError with the right code."""

from __future__ import annotations

from typing import Any


class AwsError(Exception):
    """An error answered to the client; ``code`` becomes ClientError's Error.Code."""

    code = "InternalFailure"
    status = 400

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def body(self) -> dict[str, Any]:
        return {"__type": self.code, "message": self.message, "Message": self.message}


class ValidationException(AwsError):
    code = "ValidationException"


class ResourceNotFound(AwsError):
    code = "ResourceNotFound"


class ResourceInUse(AwsError):
    code = "ResourceInUse"


class UnknownOperation(AwsError):
    code = "UnknownOperationException"


class InternalFailure(AwsError):
    code = "InternalFailure"
    status = 500


# --- sagemaker-runtime (REST-JSON protocol; its validation error is "ValidationError")


class RuntimeValidationError(AwsError):
    code = "ValidationError"


class ModelError(AwsError):
    """The model container answered an error (or none in time): status 424 like SageMaker."""

    code = "ModelError"
    status = 424

    def __init__(self, *, original_status: int, original_message: str, log_stream_arn: str):
        message = (
            f"Received {'client' if 400 <= original_status < 500 else 'server'} error "
            f'({original_status}) from primary with message "{original_message}".'
        )
        super().__init__(message)
        self.original_status = original_status
        self.original_message = original_message
        self.log_stream_arn = log_stream_arn

    def body(self) -> dict[str, Any]:
        return {
            **super().body(),
            "OriginalStatusCode": self.original_status,
            "OriginalMessage": self.original_message,
            "LogStreamArn": self.log_stream_arn,
        }
