"""The README is the contract: its commands are the ones CI runs; the config reference
(docs/config.md) is current."""

import subprocess
import sys
from pathlib import Path

from conftest import REPO

README = Path(REPO, "README.md").read_text(encoding="utf-8")
CI = Path(REPO, ".ci", "run").read_text(encoding="utf-8")


LINT = ". .venv/bin/activate && ruff check . && ruff format --check ."


# CI also builds llama.cpp (the optional kft[llamacpp] extra) so the GGUF tests run in it.
LLAMA_CPP = '. .venv/bin/activate && pip install -q -e ".[llamacpp]"'


def test_ci_runs_the_readme_commands_verbatim():
    commands = [
        line
        for line in CI.splitlines()
        if line
        and not line.startswith(("#", "set ", "cd ", "export ", "rm "))
        and line not in (LINT, LLAMA_CPP)
    ]
    assert len(commands) == 2
    blocks = README.split("```")[1::2]  # the fenced blocks' contents
    for command in commands:
        # Each command is a fenced block of its own, so a reader copies exactly that line.
        assert f"\n{command}\n" in blocks, command


def test_config_reference_is_in_sync_with_the_dataclasses():
    script = Path(REPO, "docs", "sync_config_reference.py")
    assert subprocess.run([sys.executable, str(script), "--check"]).returncode == 0, (
        "run docs/sync_config_reference.py"
    )


def test_ci_lints_and_checks_the_format_before_the_tests():
    lines = CI.splitlines()
    assert LINT in lines
    assert lines.index(LINT) < lines.index(". .venv/bin/activate && python -m pytest -q")


def test_the_readme_python_api_calls_kft_as_it_is(monkeypatch):
    """The README's Python block, run with kft's functions checked, not executed: every call binds
    to the real signature, and the config it trains resolves and validates."""
    import inspect
    from types import SimpleNamespace

    import kft
    from kft import config as config_lib

    block = README.split("```python\n", 1)[1].split("```", 1)[0]
    calls = []

    def checked(name, check=None, result=None):
        real = getattr(kft, name)

        def call(*args, **kwargs):
            bound = inspect.signature(real).bind(*args, **kwargs)
            if check:
                check(bound.arguments)
            calls.append(name)
            return result

        return call

    def valid_config(arguments):
        config_lib.load(str(Path(REPO, arguments["config"])), arguments.get("overrides", {}))

    fake_run = SimpleNamespace(run_dir="runs/readme")
    monkeypatch.setattr(kft, "train", checked("train", valid_config, fake_run))
    for name in ("load", "generate", "export", "publish"):
        monkeypatch.setattr(kft, name, checked(name))
    monkeypatch.chdir(REPO)
    exec(block, {"__name__": "readme", "print": lambda *a: None})
    assert calls == ["train", "load", "generate", "export", "publish"]
