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

from kft.core.backend import cache_dir
from kft.core.errors import KftError


def _tiny_builder(family):
    def build(folder: Path) -> None:
        from kft.models.tiny import build_tiny_preset

        build_tiny_preset(family, folder)

    return build


def _gemma3_270m(folder: Path) -> None:
    from kft.models.gguf_preset import build

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
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(folder.with_name(folder.name + ".lock")):  # another process may be preparing it
        if (folder / "config.json").is_file():
            return folder
        print(f"kft: preparing preset '{name}' into {folder} (first use only)", file=sys.stderr, flush=True)
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        from kft.core.backend import native_logs_filtered

        with native_logs_filtered():
            PREPARED[name](partial)
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
# their base by these ids).
HF_TWINS = {
    "gemma_2b_en": "google/gemma-2b", "gemma_instruct_2b_en": "google/gemma-2b-it",
    "gemma_7b_en": "google/gemma-7b", "gemma_instruct_7b_en": "google/gemma-7b-it",
    "gemma_1.1_instruct_2b_en": "google/gemma-1.1-2b-it", "gemma_1.1_instruct_7b_en": "google/gemma-1.1-7b-it",
    "gemma2_2b_en": "google/gemma-2-2b", "gemma2_instruct_2b_en": "google/gemma-2-2b-it",
    "gemma2_9b_en": "google/gemma-2-9b", "gemma2_instruct_9b_en": "google/gemma-2-9b-it",
    "gemma2_27b_en": "google/gemma-2-27b", "gemma2_instruct_27b_en": "google/gemma-2-27b-it",
    "gemma3_270m": "google/gemma-3-270m", "gemma3_instruct_270m": "google/gemma-3-270m-it",
    "gemma3_1b": "google/gemma-3-1b-pt", "gemma3_instruct_1b": "google/gemma-3-1b-it",
    "gemma3_4b": "google/gemma-3-4b-pt", "gemma3_instruct_4b": "google/gemma-3-4b-it",
    "gemma3_12b": "google/gemma-3-12b-pt", "gemma3_instruct_12b": "google/gemma-3-12b-it",
    "gemma3_27b": "google/gemma-3-27b-pt", "gemma3_instruct_27b": "google/gemma-3-27b-it",
    "gemma4_2b": "google/gemma-4-E2B", "gemma4_instruct_2b": "google/gemma-4-E2B-it",
    "gemma4_4b": "google/gemma-4-E4B", "gemma4_instruct_4b": "google/gemma-4-E4B-it",
    "gemma4_31b": "google/gemma-4-31B", "gemma4_instruct_31b": "google/gemma-4-31B-it",
    "gemma4_26b_a4b": "google/gemma-4-26B-A4B", "gemma4_instruct_26b_a4b": "google/gemma-4-26B-A4B-it",
}


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
    if is_local(preset) and (folder / "config.json").is_file() and '"model_type"' in (folder / "config.json").read_text():
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
