"""Easel's one deployable stack and the constructs it is composed of."""
