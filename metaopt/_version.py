"""The package version: the one place it is written (``pyproject.toml`` reads it through setuptools)."""

#: The installed version (`metaopt --version` prints it).
__version__ = "0.2.0"
