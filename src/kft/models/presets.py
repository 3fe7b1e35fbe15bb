"""Where a `model.preset` string points: a kft-prepared name, a local folder, or a remote handle.

kft-prepared presets are built on first use into the cache (`$KFT_CACHE`, default
`~/.cache/kft`) and reused afterwards; they are written to a temporary folder and renamed, so
an interrupted build never leaves a half preset behind, and under a file lock, so two processes
asking at once build it once.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from pathlib import Path

from kft import families
from kft.core.backend import cache_dir
from kft.core.errors import KftError


def _tiny_builder(variant: str):
    def build(folder: Path) -> None:
        from kft.models.tiny import build_tiny_preset

        build_tiny_preset(variant, folder)

    return build


def _gguf_builder(name: str):
    def build(folder: Path) -> None:
        from kft.models.gguf_preset import build

        build(folder, name)

    return build


# {name: its builder}: each family's real models prepared from GGUF, then its tiny random presets.
PREPARED = {
    **{name: _gguf_builder(name) for f in families.FAMILIES.values() for name in f.gguf_presets},
    **{
        f"tiny_{variant}": _tiny_builder(variant)
        for f in families.FAMILIES.values()
        for variant in f.tiny
    },
}


# Written last into a prepared preset: {file: bytes}. A folder without it, or whose files differ
# from it (an interrupted or damaged build, a file changed since), is built again, not trusted.
COMPLETE = ".kft-complete.json"


def _contents(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != COMPLETE
    }


def is_complete(folder: Path) -> bool:
    import json

    try:
        recorded = json.loads((folder / COMPLETE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return recorded == _contents(folder)


def prepare(name: str) -> Path:
    """Build the kft-prepared preset `name` into the cache if it is not there whole; return its folder."""
    import json

    folder = cache_dir() / "presets" / name
    if is_complete(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(folder.with_name(folder.name + ".lock")):  # another process may be preparing it
        if is_complete(folder):
            return folder
        again = " again: the cached one is incomplete or damaged" if folder.exists() else ""
        print(
            f"kft: preparing preset '{name}' into {folder}{again or ' (first use only)'}",
            file=sys.stderr,
            flush=True,
        )
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        from kft.core.backend import native_logs_filtered

        with native_logs_filtered():
            PREPARED[name](partial)
        (partial / COMPLETE).write_text(json.dumps(_contents(partial)) + "\n", encoding="utf-8")
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
    return folder


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """Hold an exclusive lock on `lock_path` (waiting for it): two commands, notebooks or test workers
    asked for the same preset at once build it once. No-op where fcntl is missing (Windows)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# KerasHub Kaggle presets and the Hugging Face checkpoints of the same weights (PEFT adapters name
# their base by these ids), from each family's table (kft/families/<name>/presets.py).
HF_TWINS = {preset: hf for f in families.FAMILIES.values() for preset, hf in f.hf_twins.items()}


def hf_twin(preset: str) -> str | None:
    """The Hugging Face id or folder holding `preset`'s weights in transformers' format, if known:
    the twin of a Kaggle preset (by name or kaggle://OWNER/MODEL/keras/NAME/V handle), or an HF-format
    preset folder itself."""
    if preset.startswith("kaggle://"):
        parts = preset.removeprefix("kaggle://").split("/")
        preset = parts[3] if len(parts) > 3 else preset
    if preset in HF_TWINS:
        return HF_TWINS[preset]
    folder = Path(preset).expanduser()
    if (
        is_local(preset)
        and (folder / "config.json").is_file()
        and '"model_type"' in (folder / "config.json").read_text()
    ):
        return str(folder.absolute())
    return None


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
