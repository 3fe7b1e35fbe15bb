"""Regenerate the README's config reference from the dataclasses (the single source of key docs).

    python scripts/sync_readme.py          # rewrite README.md in place
    python scripts/sync_readme.py --check  # exit 1 if README.md is stale
"""

import re
import sys
from pathlib import Path

from kft.config import reference_markdown

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def synced(text: str) -> str:
    block = f"{START}\n{reference_markdown()}\n{END}"
    return re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)


if __name__ == "__main__":
    text = README.read_text(encoding="utf-8")
    new = synced(text)
    if "--check" in sys.argv:
        sys.exit(0 if new == text else 1)
    README.write_text(new, encoding="utf-8")
