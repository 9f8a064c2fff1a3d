"""bertc's version (one place: the package, the manifest and `bertc --version` read it)."""

__version__ = "0.1.0"
