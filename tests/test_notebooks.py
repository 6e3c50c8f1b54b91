"""The notebooks run top to bottom (a tiny model and a few steps; the code path is the real one)."""
import os

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT, TINY


@pytest.mark.parametrize("name", ["quickstart_crnn.ipynb"])
def test_notebook_runs(name, monkeypatch):
    monkeypatch.setenv("JAXOCR_NOTEBOOK_STEPS", "2")
    monkeypatch.setenv("JAXOCR_NOTEBOOK_OVERRIDES", " ".join(TINY))
    monkeypatch.setenv("JAX_NUM_CPU_DEVICES", "2")
    path = os.path.join(ROOT, "notebooks", name)
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": os.path.dirname(path)}}).execute()
    text = "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                   for out in cell.get("outputs", []))
    assert "global_step: 2" in text and "eval: {'acc'" in text and " -> " in text
