"""kft's version, read by setup.cfg and written into every adapter."""

__version__ = "0.1.0"
