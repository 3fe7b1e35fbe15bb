"""GPTQ's float kernels parked on disk while the rest of the base loads.

GPTQ rounds a decoder block's layers on the inputs that block sees, so it cannot round a layer the
moment the loader fills it, as the nearest codes do (kft.quant.quantize_on_load). Reading the whole float
base first takes its size in host memory: Gemma 2 9B in float32 is 37 GB, more than a Kaggle GPU
session's 29 GB. So each wanted float kernel is written to a file as it arrives, and freed; GPTQ's
calibration pass (kft.quant.gptq.Hessians) reads a block's kernels back just before the block runs, and
rounds them right after; each file goes once read. The host holds one block's float kernels at a
time, the disk at most the float decoder: half of it where the float32 values are bfloat16 numbers
(Gemma's released weights are), which are stored in 2 bytes, exactly.

The folder is made in the system's temporary folder (`TMPDIR`), or in kft's cache folder
(`$KFT_CACHE/parking`) where the temporary folder lives in memory (tmpfs, as /tmp does on many Linux
machines) and parking there would take the RAM it is meant to spare. It is removed at the end; one
left by a process that was killed (a notebook kernel restarted mid-load) is removed by the next.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import weakref
from pathlib import Path

import numpy as np

from kft.core.backend import cache_dir
from kft.core.errors import KftError

GB = 1e9  # as kft plan counts
MARGIN = int(GB)  # left free on the disk
PREFIX = "kft-gptq-"  # then the process id


class Parking:
    """Float kernels written to `folder` (a new temporary folder by default) and read back by layer."""

    def __init__(self, folder: str | None = None):
        root = Path(folder) if folder else default_root()
        _remove_orphans(root)
        self.folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=root))
        self.parked = {}  # id(variable) -> (weak reference to it, file, shape, dtype, stored as bfloat16)
        self.written = self.files = 0  # bytes and files, in all

    def __contains__(self, variable) -> bool:
        entry = self.parked.get(id(variable))
        return entry is not None and entry[0]() is variable

    def park(self, layer) -> None:
        """Write `layer`'s float kernel to a file and free it (the variable is left without a value)."""
        variable = layer._kernel
        value = np.asarray(variable.value)
        halved = value.dtype == np.float32 and not np.any(value.view(np.uint32) & 0xFFFF)
        stored = (value.view(np.uint32) >> 16).astype(np.uint16) if halved else value
        free = shutil.disk_usage(self.folder).free
        if free < stored.nbytes + MARGIN:
            raise KftError(
                f"model.int4_rounding gptq parks the float decoder on disk while the base loads "
                f"({self.written / GB:.2f} GB so far in {self.folder}), and that disk has "
                f"{free / GB:.2f} GB free; set TMPDIR to a folder on a larger disk, "
                "or use model.int4_rounding least-squares"
            )
        path = self.folder / f"{self.files}.bin"
        self.files += 1
        stored.tofile(path)
        self.written += stored.nbytes
        self.parked[id(variable)] = (weakref.ref(variable), path, value.shape, value.dtype, halved)
        del value, stored
        variable._value = None

    def restore(self, layer) -> None:
        """Give `layer`'s kernel its float value back, if it was parked (and drop the file)."""
        variable = getattr(layer, "_kernel", None)
        if variable is None or variable not in self:
            return
        _, path, shape, dtype, halved = self.parked.pop(id(variable))
        if halved:
            value = (np.fromfile(path, np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            value = np.fromfile(path, dtype)
        path.unlink()
        variable.assign(value.reshape(shape))

    def close(self) -> None:
        if self.written:
            print(
                f"kft: GPTQ parked {self.written / GB:.2f} GB of float kernels on disk ({self.folder}) while "
                "the base loaded",
                file=sys.stderr,
                flush=True,
            )
        shutil.rmtree(self.folder, ignore_errors=True)


def default_root() -> Path:
    """The temporary folder, unless it lives in memory; then `$KFT_CACHE/parking`."""
    root = Path(tempfile.gettempdir())
    if in_memory(root):
        root = cache_dir() / "parking"
        root.mkdir(parents=True, exist_ok=True)
    return root


def in_memory(path: Path, mounts: str = "/proc/mounts") -> bool:
    """Whether `path` is on a tmpfs or ramfs (its longest mount point in `mounts` says)."""
    path, kind, longest = os.path.realpath(path), "", -1
    try:
        with open(mounts, encoding="utf-8") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 3:
                    continue
                mount = fields[1].replace("\\040", " ").rstrip("/") or "/"
                inside = path == mount or path.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) > longest:
                    kind, longest = fields[2], len(mount)
    except OSError:
        return False
    return kind in ("tmpfs", "ramfs")


def _remove_orphans(root: Path) -> None:
    """Remove parking folders whose process is gone (killed before it could remove them)."""
    for folder in root.glob(f"{PREFIX}*-*"):
        pid = folder.name[len(PREFIX) :].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's
        return True
    return True
