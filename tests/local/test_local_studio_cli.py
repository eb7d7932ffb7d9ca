"""`python -m local.studio` (make local): its help names the command that runs it; its terminal
stays free of the model libraries' import-time warnings; the portal knows it runs locally."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from local.studio import portal_environment, quiet_library_warnings

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_help_shows_the_command_that_runs_it():
    command = [sys.executable, "-m", "local.studio", "--help"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                            check=True)
    assert result.stdout.startswith("usage: python -m local.studio [-h]")


def test_library_loggers_are_quiet_below_errors_after_start_up():
    quiet_library_warnings()
    for name in ("bitsandbytes.backends.cpu.ops", "transformers.utils.import_utils"):
        logger = logging.getLogger(name)
        assert not logger.isEnabledFor(logging.WARNING), name
        assert logger.isEnabledFor(logging.ERROR), name


def test_the_portal_is_told_it_runs_in_local_mode():
    env = portal_environment({"AWS_REGION": "us-east-1"}, "default")
    assert env["EASEL_LOCAL_MODE"] == "true"
