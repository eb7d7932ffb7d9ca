"""The admin password (generated, rotated on a schedule) and the portal's session-signing key."""

from __future__ import annotations

from pathlib import Path

from aws_cdk import Duration
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_secretsmanager as sm
from constructs import Construct

from stacks.lambda_defaults import LAMBDA_RUNTIME, function_role
from stacks.nag import acknowledge

HANDLER_DIR = Path(__file__).resolve().parent / "rotation_handler"
ADMIN_USERNAME = "admin"
# Letters and digits only: nothing that breaks a shell, a URL or HTTP Basic auth.
PASSWORD_LENGTH = 32
SESSION_KEY_LENGTH = 64


class PortalSecrets(Construct):
    """Secrets Manager secrets for portal sign-in.

    `admin_secret` holds `{"username": "admin", "password": ...}` and is rotated every
    `rotation_days` by a Python Lambda implementing the four rotation steps. `session_key` signs
    portal sessions; it is not rotated on a schedule because rotating it signs everyone out.
    """

    def __init__(self, scope: Construct, construct_id: str, *, rotation_days: int) -> None:
        super().__init__(scope, construct_id)
        self.admin_secret = sm.Secret(
            self,
            "AdminPassword",
            description="Easel portal admin password (rotated automatically)",
            generate_secret_string=sm.SecretStringGenerator(
                secret_string_template=f'{{"username": "{ADMIN_USERNAME}"}}',
                generate_string_key="password",
                password_length=PASSWORD_LENGTH,
                exclude_punctuation=True,
                include_space=False,
                require_each_included_type=True,
            ),
        )
        self.session_key = sm.Secret(
            self,
            "SessionKey",
            description="Easel portal session-signing key",
            generate_secret_string=sm.SecretStringGenerator(
                password_length=SESSION_KEY_LENGTH,
                exclude_punctuation=True,
                include_space=False,
            ),
        )
        acknowledge(
            self.session_key,
            "Rotating the session-signing key signs every user out; it is rotated by hand "
            "(put a new value) when needed, as README.md describes.",
            "SMG4",
        )

        rotator_logs = logs.LogGroup(self, "RotatorLogs", retention=logs.RetentionDays.ONE_YEAR)
        rotator_role = function_role(self, "RotatorRole", log_group=rotator_logs,
                                     description="Easel: rotates the admin password")
        self.rotation_function = lambda_.Function(
            self,
            "Rotator",
            runtime=LAMBDA_RUNTIME,
            handler="index.handler",
            code=lambda_.Code.from_asset(str(HANDLER_DIR)),
            timeout=Duration.seconds(30),
            description="Rotates the Easel admin password",
            environment={"PASSWORD_LENGTH": str(PASSWORD_LENGTH)},
            log_group=rotator_logs,
            role=rotator_role,
        )
        self.admin_secret.add_rotation_schedule(
            "Rotation",
            rotation_lambda=self.rotation_function,
            automatically_after=Duration.days(rotation_days),
        )
        # GetRandomPassword is not resource-scoped in IAM.
        self.rotation_function.add_to_role_policy(
            iam.PolicyStatement(actions=["secretsmanager:GetRandomPassword"], resources=["*"])
        )
        acknowledge(
            rotator_role,
            "secretsmanager:GetRandomPassword supports no resource-level scoping.",
            "IAM5[Resource::*]",
        )
