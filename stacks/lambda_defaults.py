"""Settings shared by every Lambda function the stack defines."""

from aws_cdk import aws_lambda as lambda_

LAMBDA_RUNTIME = lambda_.Runtime.PYTHON_3_14
