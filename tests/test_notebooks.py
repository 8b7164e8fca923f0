"""Execute every notebook in ``notebooks/`` top to bottom, as a user would, and fail on any error.

Each notebook runs in a fresh kernel of *this* interpreter: the ipykernel spec of
``sys.executable`` is written to a temporary folder and that folder is the only place the kernel
is looked up, so ``python3`` cannot resolve to another Python on the machine (e.g. the ``python``
on ``PATH`` that ipykernel's own spec would start). All notebooks share one temporary working
directory, in file order, so notebook 03 reuses the text cache notebook 01 recorded there (it
records it itself when run alone). Every cell has a timeout.

The notebooks are committed without outputs; :func:`test_notebooks_are_clean` checks that.

After a notebook has run, it is converted to HTML with nbconvert (what ``jupyter nbconvert --to
html`` writes, and close to what GitHub's static viewer draws: neither runs the plotly mimetype
renderer) and every cell that shows a plotly figure must show it there too: an embedded PNG that
decodes to a non-blank image, or (without Chromium) an inline plotly.js figure with data. The
interactive plotly output must stay in the notebook for JupyterLab and VS Code. Set
``PROBEKIT_NOTEBOOK_HTML`` to a folder to keep the HTML pages and the executed notebooks there.
"""

from __future__ import annotations

import base64
import io
import os
import re
import sys
from pathlib import Path

import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
KERNEL_NAME = "python3"
CELL_TIMEOUT = 300  # seconds per cell; a whole notebook takes about a minute on a 2-core CPU
PLOTLY_MIMETYPE = "application/vnd.plotly.v1+json"
_CELL = re.compile(r'<div[^>]*class="jp-Cell ')
_PNG = re.compile(r'<img[^>]*src="data:image/png;base64,([^"]+)"')
_INLINE_PLOT = re.compile(r'Plotly\.newPlot\(\s*"[^"]+",\s*\[\{')


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A folder holding one kernel spec, ``python3``, that starts ``sys.executable``."""
    from ipykernel.kernelspec import write_kernel_spec

    kernels = tmp_path_factory.mktemp("kernels")
    write_kernel_spec(
        kernels / KERNEL_NAME, overrides={"display_name": f"Python ({sys.executable})"}
    )
    return str(kernels)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working directory shared by the notebooks (their ``runs/`` caches land here)."""
    return tmp_path_factory.mktemp("notebook-cwd")


def test_notebooks_exist() -> None:
    assert NOTEBOOKS, f"no notebooks in {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_are_clean(path: Path) -> None:
    """Committed without outputs or execution counts, valid nbformat, the ``python3`` kernel."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == KERNEL_NAME
    dirty = [
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and (c.outputs or c.execution_count is not None)
    ]
    assert not dirty, f"{path.name}: clear the outputs of cells {dirty} before committing"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path, kernel_dir: str, workdir: Path) -> None:
    """Run every cell in order in a fresh kernel; any cell error fails the test."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    specs = KernelSpecManager(kernel_dirs=[kernel_dir], ensure_native_kernel=False)
    km = AsyncKernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs)
    assert km.kernel_spec is not None and km.kernel_spec.argv[0] == sys.executable
    client = NotebookClient(
        nb,
        km=km,
        kernel_name=KERNEL_NAME,
        timeout=CELL_TIMEOUT,
        allow_errors=False,
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()  # raises CellExecutionError (with the cell and traceback) on any error
    _check_figures_render_in_html(nb, path)


def _visible_png(b64: str) -> bool:
    """A PNG that decodes and is not blank: some pixels differ clearly from the background."""
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
        pixels = np.asarray(im.convert("L"), dtype=np.float64)
    background = np.median(pixels)
    return min(pixels.shape) >= 100 and (np.abs(pixels - background) > 40).mean() > 0.005


def _check_figures_render_in_html(nb: nbformat.NotebookNode, path: Path) -> None:
    """Every figure cell of the executed ``nb`` shows a figure in its nbconvert HTML export."""
    from nbconvert import HTMLExporter

    page, _ = HTMLExporter().from_notebook_node(nb)
    if keep := os.environ.get("PROBEKIT_NOTEBOOK_HTML"):
        Path(keep).mkdir(parents=True, exist_ok=True)
        (Path(keep) / f"{path.stem}.html").write_text(page)
        nbformat.write(nb, Path(keep) / path.name)
    starts = [m.start() for m in _CELL.finditer(page)]
    assert len(starts) == len(nb.cells), "cannot find each cell in the HTML export"
    chunks = [page[a:b] for a, b in zip(starts, starts[1:] + [len(page)])]
    figure_cells = [
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and any(PLOTLY_MIMETYPE in o.get("data", {}) for o in c.outputs)
    ]
    assert len(figure_cells) >= 2, f"{path.name}: expected plotly figures, found {figure_cells}"
    for i in figure_cells:
        pngs = [b for b in _PNG.findall(chunks[i]) if _visible_png(b)]
        inline = _INLINE_PLOT.search(chunks[i])
        assert pngs or inline, (
            f"{path.name}, cell {i}: its plotly figure shows nothing in the HTML export "
            "(no non-blank PNG, no inline plotly.js figure)"
        )
