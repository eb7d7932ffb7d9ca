"""Admin password and session key: generated safely, admin password rotated on a schedule."""

from __future__ import annotations


def secret(synth, name):
    return synth.only("AWS::SecretsManager::Secret", path_contains=f"/Secrets/{name}/")


def test_admin_password_is_generated_without_shell_or_url_breaking_characters(synth):
    _, resource = secret(synth, "AdminPassword")
    generate = resource["Properties"]["GenerateSecretString"]
    assert generate["ExcludePunctuation"] is True
    assert generate["IncludeSpace"] is False
    assert generate["PasswordLength"] >= 24
    assert generate["GenerateStringKey"] == "password"
    assert '"username": "admin"' in generate["SecretStringTemplate"]
    assert "SecretString" not in resource["Properties"]  # never a literal default password


def test_session_key_is_generated(synth):
    _, resource = secret(synth, "SessionKey")
    assert resource["Properties"]["GenerateSecretString"]["PasswordLength"] >= 64


def test_admin_password_rotates_on_configured_schedule(synth):
    admin_id, _ = secret(synth, "AdminPassword")
    _, schedule = synth.only("AWS::SecretsManager::RotationSchedule")
    props = schedule["Properties"]
    assert props["SecretId"] == {"Ref": admin_id}
    assert props["RotationRules"]["ScheduleExpression"] == "rate(30 days)"
    assert "Fn::GetAtt" in props["RotationLambdaARN"]
    rotator_id = props["RotationLambdaARN"]["Fn::GetAtt"][0]
    function = synth.template["Resources"][rotator_id]
    assert function["Properties"]["Handler"] == "index.handler"
    assert function["Properties"]["Runtime"].startswith("python3.")
