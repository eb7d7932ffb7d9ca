"""Print or rotate the portal's admin password (kept in Secrets Manager).

    python -m scripts.admin_password get       # prints the password (only it) on stdout
    python -m scripts.admin_password rotate    # rotates now, waits, reports the new version

Rotation runs the stack's rotation Lambda (createSecret, setSecret, testSecret, finishSecret).
While it runs, the command follows the secret's version stages and the Lambda's log; when a step
fails it names the step and its error, clears the half-made pending version and leaves the
current password in place (it keeps working). The portal picks a new password up within its
secret cache time, without a restart.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError
from tqdm import tqdm

from scripts.cli import ScriptError, run_main
from scripts.stack import StackOutputs, add_target_arguments, resolve_target

STEPS = ("createSecret", "setSecret", "testSecret", "finishSecret")
# What the rotation Lambda (stacks/rotation_handler) logs when a step has done its work.
_STEP_DONE = re.compile(r"\b(createSecret|setSecret|testSecret|finishSecret): ")
_FAILURE = re.compile(r"\[ERROR\]|Traceback|Task timed out|Runtime\.\w+Error")
_ERROR_LINE = re.compile(r"\[ERROR\]\s*(?P<text>.*)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.admin_password",
        description="Print or rotate the Easel portal's admin password.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{get,rotate}")
    for name, text in (("get", "print the current admin password on stdout"),
                       ("rotate", "rotate the admin password now and wait for it")):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("--secret-id", help="secret name or ARN (default: EASEL_ADMIN_SECRET, "
                         "else the stack's AdminSecretName output)")
        add_target_arguments(sub)
        if name == "rotate":
            sub.add_argument("--timeout", type=float, default=300,
                             help="seconds to wait for the rotation (default 300)")
            sub.add_argument("--interval", type=float, default=3,
                             help="seconds between checks (default 3)")
            sub.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


@dataclass
class StepLog:
    """What the rotation function's log says since the rotation started."""

    completed: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def next_step(self) -> str:
        for step in STEPS:
            if step not in self.completed:
                return step
        return STEPS[-1]


def _plain(message: str) -> tuple[str, bool]:
    """(text, is_error) of one log event, in Lambda's text or JSON log format."""
    stripped = message.strip()
    if stripped.startswith("{"):
        try:
            record = json.loads(stripped)
        except ValueError:
            record = None
        if isinstance(record, dict):
            level = str(record.get("level", "")).upper()
            text = record.get("message") or record.get("errorMessage") or ""
            if isinstance(text, dict):
                text = text.get("errorMessage") or json.dumps(text)
            error_type = record.get("errorType")
            if error_type and error_type not in str(text):
                text = f"{error_type}: {text}"
            return str(text), level in ("ERROR", "FATAL") or "errorType" in record
    return message, bool(_FAILURE.search(message))


def parse_step_log(messages: Sequence[str]) -> StepLog:
    log = StepLog()
    for message in messages:
        text, is_error = _plain(message)
        match = _STEP_DONE.search(text)
        if match and match.group(1) not in log.completed and not is_error:
            log.completed.append(match.group(1))
        if is_error and log.error is None:
            error = _ERROR_LINE.search(text)
            found = (error.group("text") if error else text).strip()
            log.error = found.splitlines()[0][:300] if found else "the rotation function failed"
    return log


def rotation_log_group(lambda_client: Any, function_name: str) -> str:
    """The function's log group: its LoggingConfig (the stack sets one), else the default."""
    try:
        config = lambda_client.get_function_configuration(FunctionName=function_name)
    except ClientError:
        config = {}
    group = (config.get("LoggingConfig") or {}).get("LogGroup")
    return group or f"/aws/lambda/{function_name}"


def read_step_log(logs: Any, *, log_group: str, since_ms: int) -> StepLog:
    """Read the rotation Lambda's CloudWatch log since `since_ms`; no log group = no news."""
    messages: list[str] = []
    kwargs: dict[str, Any] = {"logGroupName": log_group, "startTime": since_ms}
    try:
        while True:
            answer = logs.filter_log_events(**kwargs)
            messages.extend(e.get("message", "") for e in answer.get("events", []))
            token = answer.get("nextToken")
            if not token:
                break
            kwargs["nextToken"] = token
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
            raise
    return parse_step_log(messages)


def secret_id_for(args: argparse.Namespace) -> tuple[str, Any]:
    secret_id = args.secret_id or os.environ.get("EASEL_ADMIN_SECRET")
    target = resolve_target(args)
    if not secret_id:
        secret_id = StackOutputs(target).require("AdminSecretName")
    return secret_id, target.session()


def read_password(client: Any, secret_id: str) -> tuple[str, str]:
    """(password, version id) of the AWSCURRENT version."""
    try:
        answer = client.get_secret_value(SecretId=secret_id, VersionStage="AWSCURRENT")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
            raise ScriptError(
                f"secret {secret_id!r} was not found: check --secret-id / the stack, or "
                "redeploy with `make deploy`"
            ) from None
        raise
    raw = answer.get("SecretString") or ""
    # The stack's shape is {"username": "admin", "password": ...}; like the portal, a value that
    # is not a JSON object (local mode) is the password itself.
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    password = data.get("password") if isinstance(data, dict) else raw
    if not isinstance(password, str) or not password:
        raise ScriptError(f"secret {secret_id!r} holds an empty password")
    return password, answer["VersionId"]


def _stages(client: Any, secret_id: str) -> tuple[dict[str, list[str]], dict[str, Any]]:
    description = client.describe_secret(SecretId=secret_id)
    return description.get("VersionIdsToStages", {}) or {}, description


def start_rotation(client: Any, secret_id: str) -> str:
    """Ask Secrets Manager to rotate now; returns the new version's id."""
    return client.rotate_secret(SecretId=secret_id, RotateImmediately=True)["VersionId"]


def clear_pending(client: Any, secret_id: str, version_id: str) -> None:
    """Remove AWSPENDING from a version that never became current, so a new rotation can start."""
    stages, _ = _stages(client, secret_id)
    if "AWSPENDING" in stages.get(version_id, []) and "AWSCURRENT" not in stages[version_id]:
        client.update_secret_version_stage(SecretId=secret_id, VersionStage="AWSPENDING",
                                           RemoveFromVersionId=version_id)


@dataclass
class Rotation:
    secret_id: str
    client: Any
    logs: Any
    lambda_client: Any
    timeout: float = 300
    interval: float = 3
    quiet: bool = False
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.time
    start: Callable[[Any, str], str] | None = None  # default: start_rotation

    def _preflight(self) -> str:
        stages, description = _stages(self.client, self.secret_id)
        if not description.get("RotationEnabled"):
            raise ScriptError(
                f"rotation is not enabled on {self.secret_id!r}: redeploy the stack "
                "(`make deploy`) so it attaches the rotation schedule"
            )
        for version, labels in stages.items():
            if "AWSPENDING" in labels and "AWSCURRENT" not in labels:
                raise ScriptError(
                    f"an earlier rotation did not finish (version {version} is still AWSPENDING). "
                    "Remove that label (aws secretsmanager update-secret-version-stage "
                    f"--secret-id {self.secret_id} --version-stage AWSPENDING "
                    f"--remove-from-version-id {version}) and run again."
                )
        arn = str(description.get("RotationLambdaARN") or "")
        return arn.split(":function:", 1)[1].split(":", 1)[0] if ":function:" in arn else ""

    def run(self) -> str:
        function_name = self._preflight()
        log_group = (rotation_log_group(self.lambda_client, function_name)
                     if function_name else "")
        _, old_version = read_password(self.client, self.secret_id)
        since_ms = int(self.clock() * 1000) - 5000
        token = (self.start or start_rotation)(self.client, self.secret_id)
        deadline = self.clock() + self.timeout
        bar = tqdm(total=len(STEPS), desc="rotating", unit="step", file=sys.stderr,
                   disable=self.quiet)
        try:
            while True:
                stages, _ = _stages(self.client, self.secret_id)
                log = (read_step_log(self.logs, log_group=log_group, since_ms=since_ms)
                       if log_group else StepLog())
                bar.n = len(STEPS) if "AWSCURRENT" in stages.get(token, []) else len(
                    log.completed)
                bar.set_postfix_str(log.next_step if bar.n < len(STEPS) else "done")
                bar.refresh()
                if "AWSCURRENT" in stages.get(token, []):
                    return token
                if log.error is not None:
                    self._fail(token, old_version,
                               f"step {log.next_step} failed: {log.error}")
                if self.clock() >= deadline:
                    waiting = log.next_step if log_group else "unknown (no function log)"
                    self._fail(token, old_version,
                               f"no result after {self.timeout:g}s; the step that did not "
                               f"finish: {waiting}")
                self.sleep(self.interval)
        finally:
            bar.close()

    def _fail(self, token: str, old_version: str, reason: str) -> None:
        clear_pending(self.client, self.secret_id, token)
        _, current = read_password(self.client, self.secret_id)
        unchanged = (
            f"The current password (version {current}) is unchanged and still works."
            if current == old_version
            else f"Note: the current version is now {current}."
        )
        raise ScriptError(
            f"rotation of {self.secret_id!r} failed: {reason}. {unchanged} See the rotation "
            "function's CloudWatch log for details; fix the cause and run `rotate` again."
        )


def run(args: argparse.Namespace) -> int:
    secret_id, session = secret_id_for(args)
    client = session.client("secretsmanager")
    if args.command == "get":
        password, _ = read_password(client, secret_id)
        print(password)
        return 0
    rotation = Rotation(secret_id=secret_id, client=client, logs=session.client("logs"),
                        lambda_client=session.client("lambda"), timeout=args.timeout,
                        interval=args.interval, quiet=args.quiet)
    token = rotation.run()
    print(f"rotated: the admin password is now version {token}. Print it with "
          "`python -m scripts.admin_password get`.")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
