"""The package version (one place: pyproject reads the same string)."""

__version__ = "0.1.0"
