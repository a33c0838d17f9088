"""Execute notebooks headlessly (nbclient): ``python -m agc.notebooks notebooks/ [--store]``.

Used by the nox session ``notebooks`` (with ``--store``: each notebook is written back with
its outputs, so a reader sees them without running it) and by the test suite (nothing
written), so the notebooks that reproduce the analysis and the reports are checked wherever
the tests run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path


def execute_notebook(
    path: str | os.PathLike,
    *,
    timeout: int = 600,
    workdir: str | None = None,
    store: bool = False,
):
    """Run every cell of one notebook in a fresh kernel; raise on the first failing cell.

    The notebook runs in ``workdir`` (a temporary directory by default), so nothing it writes
    lands in the source tree. With ``store``, the executed notebook (its outputs) replaces
    the file, atomically and only when every cell ran. Returns the executed notebook node.
    """
    import nbformat
    from nbclient import NotebookClient

    path = Path(path).resolve()
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="agc-nb-") as tmp:
        cwd = workdir or tmp
        env_backup = os.environ.get("AGC_NOTEBOOK_SOURCE_DIR")
        os.environ["AGC_NOTEBOOK_SOURCE_DIR"] = str(path.parent)
        try:
            NotebookClient(
                nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": cwd}}
            ).execute()
        finally:
            if env_backup is None:
                os.environ.pop("AGC_NOTEBOOK_SOURCE_DIR", None)
            else:
                os.environ["AGC_NOTEBOOK_SOURCE_DIR"] = env_backup
    if store:
        from agc.fileio import atomic_write_text

        atomic_write_text(path, nbformat.writes(nb) + "\n")
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("paths", nargs="+", help="notebooks or directories of notebooks")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    parser.add_argument(
        "--store",
        action="store_true",
        help="write each notebook back with its outputs (only when all its cells ran)",
    )
    args = parser.parse_args(argv)
    notebooks = []
    for p in map(Path, args.paths):
        notebooks += sorted(p.glob("*.ipynb")) if p.is_dir() else [p]
    failed = 0
    for nb in notebooks:
        try:
            execute_notebook(nb, timeout=args.timeout, store=args.store)
            print(f"ok      {nb}")
        except Exception as err:  # report every notebook, then fail
            failed += 1
            print(f"FAILED  {nb}: {type(err).__name__}: {str(err)[-2000:]}", file=sys.stderr)
    print(f"{len(notebooks) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
