"""Regenerate docs/config.md's config reference from the dataclasses (the single source of key docs).

python docs/sync_config_reference.py          # rewrite docs/config.md in place
python docs/sync_config_reference.py --check  # exit 1 if docs/config.md is stale
"""

import re
import sys
from pathlib import Path

from kft.config import reference_markdown

CONFIG_DOC = Path(__file__).resolve().parent / "config.md"
START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def synced(text: str) -> str:
    block = f"{START}\n{reference_markdown()}\n{END}"
    return re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)


if __name__ == "__main__":
    text = CONFIG_DOC.read_text(encoding="utf-8")
    if START not in text or END not in text:
        sys.exit(f"{CONFIG_DOC}: the {START} ... {END} markers are missing")
    new = synced(text)
    if "--check" in sys.argv:
        sys.exit(0 if new == text else 1)
    CONFIG_DOC.write_text(new, encoding="utf-8")
