"""The files kft writes and reads back (a run folder's JSON, safetensors and npz), opened so that
damage becomes one line naming the file: missing, empty, cut short, not what its name says, or
another program's. Everything read from a run folder or a checkpoint goes through here.
"""

from __future__ import annotations

import json
from pathlib import Path

from kft.core.errors import KftError


class Damaged(KftError):
    """A file kft wrote that does not read back whole."""


def damaged(path: str | Path, what: str, fix: str) -> Damaged:
    return Damaged(f"{path} {what}; {fix}")


def _present(path: Path, fix: str) -> None:
    if not path.is_file():
        raise damaged(path, "is missing", fix)
    if path.stat().st_size == 0:
        raise damaged(path, "is empty (an interrupted copy or write?)", fix)


def read_json(path: str | Path, fix: str, kind: type = dict):
    """The JSON value in `path` (a `kind`: a dict unless said otherwise)."""
    path = Path(path)
    _present(path, fix)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise damaged(path, "is not text (damaged, or not the file kft wrote)", fix) from None
    except json.JSONDecodeError as e:
        raise damaged(
            path, f"is not valid JSON (line {e.lineno}: {e.msg}; cut short?)", fix
        ) from None
    if not isinstance(value, kind):
        raise damaged(
            path, f"holds a {type(value).__name__}, not the {kind.__name__} kft wrote", fix
        )
    return value


def read_jsonl(path: str | Path, fix: str) -> list[dict]:
    """The JSON objects of `path`, one a line (blank lines skipped); an empty file is no rows."""
    path = Path(path)
    if not path.is_file():
        raise damaged(path, "is missing", fix)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise damaged(path, "is not text (damaged, or not the file kft wrote)", fix) from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise damaged(
                path, f"line {number} is not valid JSON ({e.msg}; cut short?)", fix
            ) from None
        if not isinstance(row, dict):
            raise damaged(path, f"line {number} is not a JSON object", fix)
        rows.append(row)
    return rows


def read_safetensors(path: str | Path, fix: str) -> dict:
    """{name: numpy array} of the safetensors file `path`."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    _present(path, fix)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise damaged(path, f"is not a readable safetensors file ({reason})", fix) from None


def read_npz(path: str | Path, fix: str) -> dict:
    """{name: numpy array} of the .npz file `path`, read whole."""
    import zipfile

    import numpy as np

    path = Path(path)
    _present(path, fix)
    try:
        with np.load(path, allow_pickle=False) as saved:
            return {name: saved[name] for name in saved.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as e:
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise damaged(path, f"is not a readable .npz file ({reason})", fix) from None
