"""Every notebook in notebooks/ executes headlessly without errors (small data)."""

from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[n.name for n in NOTEBOOKS])
def test_notebook_executes(notebook):
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from agc.notebooks import execute_notebook

    nb = execute_notebook(notebook, timeout=900)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert code_cells, f"{notebook.name} has no code"
    assert all(c.get("execution_count") for c in code_cells), "a code cell did not run"
    errors = [
        o for c in code_cells for o in c.get("outputs", []) if o.get("output_type") == "error"
    ]
    assert not errors
