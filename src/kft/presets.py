"""Where a `model.preset` string points: a kft-prepared name, a local folder, or a remote handle.

kft-prepared presets are built on first use into the cache (`$KFT_CACHE`, default
`~/.cache/kft`) and reused afterwards; they are written to a temporary folder and renamed, so
an interrupted build never leaves a half preset behind.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from kft.errors import KftError


def cache_dir() -> Path:
    return Path(os.environ.get("KFT_CACHE", "~/.cache/kft")).expanduser()


def _tiny_builder(family):
    def build(folder: Path) -> None:
        from kft.tiny import build_tiny_preset

        build_tiny_preset(family, folder)

    return build


def _gemma3_270m(folder: Path) -> None:
    from kft.gguf_preset import build

    build(folder)


PREPARED = {
    "gemma3_270m_gguf": _gemma3_270m,
    "tiny_gemma": _tiny_builder("gemma"),
    "tiny_gemma2": _tiny_builder("gemma2"),
    "tiny_gemma3": _tiny_builder("gemma3"),
    "tiny_gemma4": _tiny_builder("gemma4"),
    "tiny_gemma4_moe": _tiny_builder("gemma4_moe"),
}


def prepare(name: str) -> Path:
    """Build the kft-prepared preset `name` into the cache if it is not there yet; return its folder."""
    folder = cache_dir() / "presets" / name
    if (folder / "config.json").is_file():
        return folder
    print(f"kft: preparing preset '{name}' into {folder} (first use only)", file=sys.stderr, flush=True)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    PREPARED[name](partial)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder


def is_local(preset: str) -> bool:
    return preset.startswith((".", "/", "~")) or Path(preset).expanduser().exists()


def resolve(preset: str) -> str:
    """A string `from_preset` accepts: a prepared or local folder, or the remote handle as given."""
    if preset in PREPARED:
        return str(prepare(preset))
    if is_local(preset):
        folder = Path(preset).expanduser()
        if not (folder / "config.json").is_file():
            raise KftError(f"model.preset '{preset}' is not a preset folder (no config.json there)")
        return str(folder)
    return preset
