"""What every helper command shares: exit codes, errors that say what to do, the main wrapper."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_CREDENTIAL_CODES = {
    "ExpiredToken", "ExpiredTokenException", "InvalidClientTokenId", "UnrecognizedClientException",
    "SignatureDoesNotMatch", "AuthFailure", "RequestExpired",
}


class ScriptError(Exception):
    """A failure the user can act on; the message says what happened and what to do."""

    exit_code = EXIT_FAILURE


class UsageError(ScriptError):
    """The command line itself is wrong (exit code 2, like argparse)."""

    exit_code = EXIT_USAGE


def describe_client_error(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    code = error.get("Code", "Unknown")
    message = error.get("Message", "")
    operation = getattr(exc, "operation_name", "an AWS call")
    if code in _CREDENTIAL_CODES:
        return (
            f"AWS rejected the credentials ({code}: {message}). Refresh them "
            "(`aws sso login`, `aws configure`, or new AWS_* variables) and run again."
        )
    if code in ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation"):
        return (
            f"{operation}: access denied ({message}). Use credentials allowed to call it "
            "(the role you deploy with), or ask your AWS administrator."
        )
    return f"{operation} failed: {code}: {message}"


def run_main(
    handler: Callable[[argparse.Namespace], int | None],
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
    *,
    stderr: TextIO | None = None,
) -> int:
    """Parse `argv`, run `handler`, and turn every expected failure into a message + exit code.

    argparse itself exits with 2 on a usage error (and 0 for --help).
    """
    err = stderr or sys.stderr
    args = parser.parse_args(argv)
    try:
        code = handler(args)
    except ScriptError as exc:
        print(f"error: {exc}", file=err)
        return exc.exit_code
    except (NoCredentialsError, PartialCredentialsError):
        print(
            "error: no AWS credentials found. Configure them (`aws configure`, `aws sso login`, "
            "or AWS_PROFILE / AWS_ACCESS_KEY_ID) and run again.",
            file=err,
        )
        return EXIT_FAILURE
    except NoRegionError:
        print("error: no AWS region: pass --region or set AWS_REGION.", file=err)
        return EXIT_USAGE
    except EndpointConnectionError as exc:
        print(f"error: cannot reach AWS ({exc}). Check the network and the region.", file=err)
        return EXIT_FAILURE
    except ClientError as exc:
        print(f"error: {describe_client_error(exc)}", file=err)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("interrupted", file=err)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug or an unexpected answer: a short message, no traceback
        if os.environ.get("EASEL_DEBUG"):
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc} (set EASEL_DEBUG=1 to see the "
              "traceback, and please report it)", file=err)
        return EXIT_FAILURE
    return EXIT_OK if code is None else code


def confirm(question: str, *, assume_yes: bool, stdin: TextIO | None = None,
            stderr: TextIO | None = None) -> bool:
    """Ask a yes/no question on the terminal; `assume_yes` answers yes without asking."""
    if assume_yes:
        return True
    source = stdin or sys.stdin
    err = stderr or sys.stderr
    if not source.isatty():
        raise UsageError(f"{question} Needs a confirmation: run it in a terminal or pass --yes.")
    print(f"{question} [y/N] ", end="", file=err, flush=True)
    return source.readline().strip().lower() in ("y", "yes")
