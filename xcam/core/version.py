"""xcam's version (one place: the package, its exports' metadata and the CLI read it)."""

__version__ = "0.1.0"
