"""The reliability slice reuses the portal's test world (moto + fake SageMaker clients)."""

from tests.webui.conftest import world  # noqa: F401 - a fixture, used by name
