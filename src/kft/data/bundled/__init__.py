"""Small datasets that ship with kft (`bundled:NAME` as data.source)."""

from pathlib import Path

FOLDER = Path(__file__).parent
