"""Secrets Manager content on disk: one private JSON file, ``secrets.json`` (mode 0600)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from local.statefiles import read_json, write_json_atomic


def snapshot_secrets(secretsmanager: Any, path: Path) -> None:
    """Write the current value, description and tags of every secret to ``path``."""
    stored: dict[str, dict[str, Any]] = {}
    for page in secretsmanager.get_paginator("list_secrets").paginate():
        for listed in page.get("SecretList", []):
            if listed.get("DeletedDate"):
                continue
            name = listed["Name"]
            try:
                value = secretsmanager.get_secret_value(SecretId=name)
            except secretsmanager.exceptions.ResourceNotFoundException:
                continue  # a secret without a value yet, or deleted meanwhile
            except secretsmanager.exceptions.InvalidRequestException:
                continue  # scheduled for deletion
            entry: dict[str, Any] = {
                "Description": listed.get("Description", ""),
                "Tags": listed.get("Tags", []),
            }
            if "SecretString" in value:
                entry["SecretString"] = value["SecretString"]
            elif "SecretBinary" in value:
                entry["SecretBinaryBase64"] = base64.b64encode(value["SecretBinary"]).decode()
            stored[name] = entry
    write_json_atomic(path, stored, private=True)


def seed_secrets(secretsmanager: Any, path: Path) -> list[str]:
    """Create every secret kept in ``path``; returns their names."""
    stored: dict[str, dict[str, Any]] = read_json(path, {})
    for name, entry in stored.items():
        arguments: dict[str, Any] = {"Name": name}
        if entry.get("Description"):
            arguments["Description"] = entry["Description"]
        if entry.get("Tags"):
            arguments["Tags"] = entry["Tags"]
        if "SecretString" in entry:
            arguments["SecretString"] = entry["SecretString"]
        elif "SecretBinaryBase64" in entry:
            arguments["SecretBinary"] = base64.b64decode(entry["SecretBinaryBase64"])
        secretsmanager.create_secret(**arguments)
    return list(stored)
