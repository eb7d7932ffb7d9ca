"""The AWS emulator: a moto server subprocess whose state is kept on disk."""
