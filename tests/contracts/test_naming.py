import pytest

from easel_contracts import naming


@pytest.mark.parametrize("value", ["easel", "team-a1", "abc", "a" * 20])
def test_valid_deployment_ids_pass(value):
    assert naming.check_deployment_id(value) == value


@pytest.mark.parametrize("value", ["", "ab", "1easel", "Easel", "easel-", "a" * 21, "ea_sel"])
def test_invalid_deployment_ids_name_the_rule(value):
    with pytest.raises(ValueError, match="lower-case"):
        naming.check_deployment_id(value)


def test_deployment_tags_carry_the_id():
    assert naming.deployment_tags("team") == [{"Key": "easel:deployment", "Value": "team"}]
