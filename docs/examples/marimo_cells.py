"""Learn a marimo notebook's cell ids offline, before any server is contacted."""

import tempfile
from pathlib import Path

from fsm.marimo import notebook_cells

NOTEBOOK = '''\
import marimo

app = marimo.App()


@app.cell
def _():
    x = 1
    return (x,)


@app.cell
def _(x):
    y = x + 1
    return


if __name__ == "__main__":
    app.run()
'''

with tempfile.TemporaryDirectory() as folder:
    path = Path(folder) / "nb.py"
    path.write_text(NOTEBOOK)
    # --8<-- [start:cells]
    cells = notebook_cells(path)  # parses the file as `marimo edit` does; runs nothing
    print(cells)
    assert cells == [("Hbol", "x = 1"), ("MJUe", "y = x + 1")]
    # --8<-- [end:cells]
print("marimo notebook cells: ok")
