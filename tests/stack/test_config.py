"""Config loading: defaults load; each class of bad config is an error naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stacks.config import ConfigError, load_config

DEFAULT = Path(__file__).resolve().parents[2] / "config" / "default.yaml"


def write_stage(tmp_path: Path, stage: str, overrides: dict) -> Path:
    (tmp_path / "default.yaml").write_text(DEFAULT.read_text())
    (tmp_path / f"{stage}.yaml").write_text(yaml.safe_dump(overrides))
    return tmp_path


def test_default_config_loads_with_documented_defaults():
    config = load_config()
    assert config.deployment_id == "easel"
    assert config.purge_data is False
    assert config.admin_password_rotation_days == 30
    assert config.account is None and config.region is None  # environment-agnostic
    assert "ml.g5.xlarge" in config.endpoints.instance_types


def test_stage_file_is_merged_over_default(tmp_path):
    directory = write_stage(tmp_path, "prod", {"deployment_id": "studio", "portal": {"nat_gateways": 2}})
    config = load_config("prod", config_dir=directory)
    assert config.deployment_id == "studio"
    assert config.portal.nat_gateways == 2
    assert config.portal.max_azs == 2  # untouched keys keep the default


@pytest.mark.parametrize(
    ("overrides", "key", "words"),
    [
        ({"deploymnet_id": "x"}, "deploymnet_id", "unknown key"),
        ({"portal": {"vpc_cidrr": "10.0.0.0/16"}}, "portal.vpc_cidrr", "unknown key"),
        ({"deployment_id": "Easel_Prod"}, "deployment_id", "pattern"),
        ({"deployment_id": "a"}, "deployment_id", "pattern"),
        ({"portal": {"vpc_cidr": "10.0.0.0/33"}}, "portal.vpc_cidr", "not an IPv4 CIDR"),
        ({"portal": {"vpc_cidr": "8.8.0.0/16"}}, "portal.vpc_cidr", "private"),
        ({"portal": {"vpc_cidr": "10.0.0.1/16"}}, "portal.vpc_cidr", "not an IPv4 CIDR"),
        ({"portal": {"nat_gateways": 3, "max_azs": 2}}, "portal", "nat_gateways"),
        (
            {"endpoints": {"instance_types": {"ml.g5.huge": {"gpu_memory_gb": 24, "instance_storage": True, "hourly_usd": 1}}}},
            "endpoints.instance_types",
            "ml.g5.huge",
        ),
        (
            {"endpoints": {"instance_types": {"ml.m5.xlarge": {"gpu_memory_gb": 24, "instance_storage": False, "hourly_usd": 1}}}},
            "endpoints.instance_types",
            "not a GPU family Easel's images run on",
        ),
        (  # V100: the CUDA 13 torch wheels have no sm_70 kernels
            {"training": {"instance_types": {"ml.p3.2xlarge": {"gpu_memory_gb": 16, "instance_storage": False, "hourly_usd": 3.8}}}},
            "training.instance_types",
            "ml.p3.2xlarge",
        ),
        (
            {"training": {"instance_types": {"ml.g5.xlarge": {"gpu_memory_gb": 24, "hourly_usd": 1}}}},
            "training.instance_types.ml.g5.xlarge.instance_storage",
            "required key is missing",
        ),
        ({"endpoints": {"log_retention_days": 10}}, "endpoints.log_retention_days", "retention"),
        ({"admin_password_rotation_days": 0}, "admin_password_rotation_days", "greater than"),
        ({"data_bucket_name": "Bad_Bucket"}, "data_bucket_name", "bucket name"),
        ({"account": "1234"}, "account", "pattern"),
        ({"region": "moon-1"}, "region", "pattern"),
    ],
)
def test_bad_config_error_names_the_key(tmp_path, overrides, key, words):
    directory = write_stage(tmp_path, "bad", overrides)
    with pytest.raises(ConfigError) as caught:
        load_config("bad", config_dir=directory)
    message = str(caught.value)
    assert f"  {key}:" in message, message
    assert words in message, message
    assert "bad.yaml" in message


def test_missing_stage_file_is_a_clear_error(tmp_path):
    (tmp_path / "default.yaml").write_text(DEFAULT.read_text())
    with pytest.raises(ConfigError, match="stage 'nope'.*does not exist"):
        load_config("nope", config_dir=tmp_path)


def test_invalid_yaml_is_a_clear_error(tmp_path):
    (tmp_path / "default.yaml").write_text("deployment_id: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(config_dir=tmp_path)


def test_non_mapping_yaml_is_rejected(tmp_path):
    (tmp_path / "default.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(config_dir=tmp_path)


def test_stage_name_cannot_escape_the_config_folder(tmp_path):
    with pytest.raises(ConfigError, match="stage"):
        load_config("../secrets", config_dir=tmp_path)


def test_app_refuses_bad_config_at_synth(tmp_path, monkeypatch):
    from stacks.app import build_app

    directory = write_stage(tmp_path, "bad", {"purge_dat": True})
    monkeypatch.setattr("stacks.config.CONFIG_DIR", directory)
    with pytest.raises(ConfigError, match="purge_dat"):
        build_app(stage="bad", nag=False)
