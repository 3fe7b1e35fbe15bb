"""`kft publish`: upload a run (as a merged Keras preset) or an export folder to Kaggle Models or the
Hugging Face Hub, with its model card. Credentials are checked before any heavy work and are
never written anywhere; `--dry-run` validates by reloading and uploads nothing.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from kft.core import backend, files, network
from kft.core.errors import KftError

HOSTS = {"kaggle": "www.kaggle.com", "hf": "huggingface.co"}


def _kind(folder: Path) -> str:
    """'run', 'keras' (a KerasHub preset), 'hf' (a transformers checkpoint), 'peft', 'gguf' or
    'gguf-lora' (a llama.cpp adapter, with or without base.gguf)."""
    if (folder / "adapter.safetensors").is_file() and (folder / "config.yaml").is_file():
        return "run"
    if (folder / "model.gguf").is_file():
        return "gguf"
    if (folder / "adapter.gguf").is_file():
        return "gguf-lora"
    if (folder / "adapter_model.safetensors").is_file():
        return "peft"
    config = folder / "config.json"
    if config.is_file():
        return "hf" if "model_type" in files.read_json(config, "export it again") else "keras"
    raise KftError(
        f"'{folder}' is neither a kft run folder nor an export (no config.json / adapter files)"
    )


def _target(uri: str) -> tuple[str, str]:
    for scheme in ("kaggle", "hf"):
        if uri.startswith(f"{scheme}://") and uri.count("/") >= (5 if scheme == "kaggle" else 3):
            return scheme, uri.split("://", 1)[1]
    raise KftError(
        f"--to must look like kaggle://OWNER/MODEL/keras/VARIANT or hf://OWNER/REPO, got '{uri}'"
    )


def check_credentials(scheme: str) -> None:
    """Fail in one line, before any work, when the destination cannot be authenticated or reached."""
    if scheme == "kaggle":
        has = (
            (os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"))
            or os.environ.get("KAGGLE_API_TOKEN")
            or Path("~/.kaggle/kaggle.json").expanduser().is_file()
        )
        if not has:
            raise KftError(
                "no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY, or put kaggle.json in ~/.kaggle/"
            )
    else:
        from huggingface_hub import get_token

        if not get_token():
            raise KftError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    if not network.reachable(HOSTS[scheme], timeout=5):
        raise KftError(
            f"cannot reach {HOSTS[scheme]} (offline?); publish from a machine with network access"
        )


def _validate(folder: Path, kind: str) -> None:
    """Reload the folder the way its users will; a broken export fails here, not after upload."""
    if kind == "keras":
        import keras_hub

        keras_hub.models.CausalLM.from_preset(str(folder))
    elif kind == "hf":
        import transformers

        transformers.AutoConfig.from_pretrained(str(folder))
        transformers.AutoTokenizer.from_pretrained(str(folder))
    elif kind == "peft":
        files.read_json(folder / "adapter_config.json", "export it again")
    elif kind.startswith("gguf"):
        import gguf

        for file in sorted(folder.glob("*.gguf")):
            try:
                gguf.GGUFReader(str(file))
            except (ValueError, OSError) as e:
                raise KftError(f"'{file}' is not a readable GGUF ({e}); export it again") from None


def publish(folder: str, to: str, dry_run: bool = False, echo=print) -> None:
    """Upload `folder` to `to`; with dry_run, print what would go and upload nothing."""

    scheme, _ = _target(to)
    path = Path(folder)
    if not path.is_dir():
        raise KftError(f"'{folder}' is not a folder; give a run folder or an export folder")
    kind = _kind(path)
    if scheme == "kaggle" and kind not in ("run", "keras"):
        raise KftError(
            "Kaggle Models takes Keras presets: publish the run folder or a `kft export --format keras` folder"
        )
    if not dry_run:
        check_credentials(scheme)
    backend.setup()
    with tempfile.TemporaryDirectory(prefix="kft-publish-") as tmp:
        if kind == "run":
            from kft.export import export

            path, kind = export(str(path), "keras", str(Path(tmp) / "preset")), "keras"
        _validate(path, kind)
        files = sorted(p for p in path.rglob("*") if p.is_file())
        echo(f"kft: {'would upload' if dry_run else 'uploading'} {kind} folder {path} to {to}:")
        for f in files:
            echo(f"  {f.relative_to(path)}  {f.stat().st_size / 2**20:.2f} MB")
        card = path / "README.md"
        if card.is_file():
            echo("--- model card (README.md) ---")
            echo(card.read_text(encoding="utf-8"))
        if dry_run:
            echo("kft: dry run: nothing uploaded")
            return
        try:
            _upload(path, kind, to)
        except Exception as e:  # auth, quota, name clashes: the service's own words, on one line
            raise KftError(
                f"upload to {to} failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
            ) from None
        echo(f"kft: published to {to}")


def _upload(path: Path, kind: str, to: str) -> None:
    if kind == "keras":
        import keras_hub

        keras_hub.upload_preset(to, str(path))
        return
    from huggingface_hub import HfApi

    api = HfApi()
    repo = to.split("://", 1)[1]
    api.create_repo(repo, exist_ok=True)
    api.upload_folder(repo_id=repo, folder_path=str(path))
