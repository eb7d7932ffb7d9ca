#!/usr/bin/env python3
"""CDK entry point (`cdk synth/deploy/destroy`). The stage comes from `-c stage=<name>`."""

import sys

from stacks.app import build_app
from stacks.config import ConfigError

try:
    app, _stack = build_app()
except ConfigError as error:
    sys.exit(f"Easel configuration error: {error}")
app.synth()
