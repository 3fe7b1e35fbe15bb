"""examples/kaggle_quickstart.ipynb runs top to bottom (tiny local preset, a few steps, no network).

In the slow tier (about a minute: a kernel, a run, two exports, a publish dry run):
`python -m pytest -m slow tests/test_notebook.py`."""

import json
import os
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow
NOTEBOOK = Path(REPO) / "examples" / "kaggle_quickstart.ipynb"


def _text(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        parts.append(output.get("text", ""))
        data = output.get("data", {})
        parts.append(data.get("text/plain", "") + data.get("text/html", ""))
    return "".join(parts)


@pytest.fixture(scope="module")
def executed(tiny_presets, tmp_path_factory):
    import nbclient
    import nbformat

    work = tmp_path_factory.mktemp("notebook")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    [index] = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    nb.cells.insert(
        index + 1,
        nbformat.v4.new_code_cell(
            f"PRESET = {tiny_presets['gemma3']!r}\nDATA = 'bundled:tiny_facts'\nMAX_STEPS = 40\n"
            "BATCH_SIZE = 4\nLR = 0.01\nMAX_EXAMPLES = None\n"
            f"SEQ_LEN = 64\nRUN_DIR = {str(work / 'run')!r}\nINSTALL = False"
        ),
    )
    env_path = os.environ["PATH"]
    # `!kft` is this venv's
    os.environ["PATH"] = f"{Path(os.sys.executable).parent}{os.pathsep}{env_path}"
    try:
        nbclient.NotebookClient(
            nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(work)}}
        ).execute()
    finally:
        os.environ["PATH"] = env_path
    return nb, work


def test_the_quickstart_notebook_trains_and_the_loss_falls(executed):
    nb, work = executed
    summary = json.loads((work / "run" / "summary.json").read_text())
    assert summary["final_loss"] < 0.8 * summary["first_loss"]
    train_cell = next(c for c in nb.cells if "kft.train(config)" in c.source)
    assert f"{summary['final_loss']}" in _text(train_cell)
    # In a notebook progress is one updating bar per phase, not a line per logged step.
    assert "training: 100%" in _text(train_cell) and "measuring before: 100%" in _text(train_cell)
    assert "step 10/40" not in _text(train_cell)


def test_the_notebook_shows_the_plot_the_samples_and_a_generation(executed):
    nb, _ = executed
    plot = next(c for c in nb.cells if "loss.png" in c.source and c.cell_type == "code")
    assert any("image/png" in o.get("data", {}) for o in plot.outputs)
    table = next(c for c in nb.cells if "samples[[" in c.source)
    assert "<table" in _text(table) and "after" in _text(table)
    generated = next(c for c in nb.cells if "kft.generate(" in c.source)
    assert _text(generated).strip()


def test_the_notebook_exports_and_dry_runs_a_publish(executed):
    nb, work = executed
    assert (work / "exports" / "hf" / "model.safetensors").is_file()
    assert (work / "exports" / "peft" / "adapter_config.json").is_file()
    assert (work / "exports" / "peft" / "base" / "config.json").is_file()
    publish = next(c for c in nb.cells if "kft publish" in c.source)
    assert "model card" in _text(publish) and "Traceback" not in _text(publish)
