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


def test_resource_names_start_with_the_deployment_prefix():
    assert naming.resource_name("team", "dog-v1") == "team-dog-v1"
    assert naming.resource_name("team", "x").startswith(naming.resource_prefix("team"))


@pytest.mark.parametrize("value", ["a", "dog-v1", "a1-b2-c3"])
def test_valid_short_names_pass(value):
    assert naming.check_short_name(value) == value


@pytest.mark.parametrize("value", ["", "-dog", "dog-", "do--g", "Dog", "dog_1"])
def test_invalid_short_names_name_the_field_and_rule(value):
    with pytest.raises(ValueError, match="job name: use 1-40 lower-case"):
        naming.check_short_name(value, field="job name")


def test_a_too_long_short_name_is_refused_with_the_limit_not_cut():
    with pytest.raises(ValueError, match=r"job name: at most 40 characters \(this one has 41\)"):
        naming.check_short_name("a" * 41, field="job name")


def test_handler_environment_maps_variables_to_the_tag_keys():
    assert naming.handler_tag_environment() == {
        naming.DEPLOYMENT_TAG_ENV: naming.DEPLOYMENT_TAG,
        naming.IDLE_TTL_TAG_ENV: naming.IDLE_TTL_TAG,
    }
