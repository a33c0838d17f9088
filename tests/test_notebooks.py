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


def _tiny_notebook(path: Path, source: str) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    path.write_text(nbformat.writes(nb))
    return path


def test_store_writes_the_outputs_back_and_a_failure_leaves_the_notebook(tmp_path):
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    import nbformat

    from agc.notebooks import execute_notebook

    ok = _tiny_notebook(tmp_path / "ok.ipynb", "print(6 * 7)")
    execute_notebook(ok, store=True, timeout=120)
    (cell,) = nbformat.read(ok, as_version=4).cells
    assert cell.outputs and "42" in cell.outputs[0]["text"]
    bad = _tiny_notebook(tmp_path / "bad.ipynb", "1 / 0")
    before = bad.read_text()
    with pytest.raises(Exception, match="ZeroDivisionError"):
        execute_notebook(bad, store=True, timeout=120)
    assert bad.read_text() == before
