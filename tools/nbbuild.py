"""Build a notebook from a compact Python description (keeps notebooks reviewable as code).

Usage: python tools/nbbuild.py notebooks/src/01_curation.py notebooks/01_curation.ipynb
Source format: cells separated by lines starting with '# %%' ('# %% [markdown]' for markdown,
'# %% [parameters]' for the papermill parameters cell). Markdown cells are written as '# ' comments.
A header may end with cell tags as jupytext writes them, e.g. '# %% tags=["3d"]' (kit reproduce
leaves out the cells of the other path: tag "3d" in a run of a 2D objective, "2d" otherwise).
"""

import json
import re
import sys
from pathlib import Path

import nbformat


def build(src: Path) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    chunks, current, kind, tags = [], [], None, []
    for line in src.read_text().splitlines():
        if line.startswith("# %%"):
            if kind is not None:
                chunks.append((kind, current, tags))
            kind = "markdown" if "[markdown]" in line else ("parameters" if "[parameters]" in line else "code")
            found = re.search(r"tags=(\[.*\])", line)
            tags = json.loads(found.group(1)) if found else []
            current = []
        elif kind is not None:
            current.append(line)
    if kind is not None:
        chunks.append((kind, current, tags))
    for kind, lines, tags in chunks:
        while lines and not lines[-1].strip():
            lines.pop()
        while lines and not lines[0].strip():
            lines.pop(0)
        if kind == "markdown":
            text = "\n".join(l[2:] if l.startswith("# ") else l.lstrip("#") for l in lines)
            cell = nbformat.v4.new_markdown_cell(text)
        else:
            cell = nbformat.v4.new_code_cell("\n".join(lines))
        tags = (["parameters"] if kind == "parameters" else []) + list(tags)
        if tags:
            cell.metadata["tags"] = tags
        nb.cells.append(cell)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"
    return nb


if __name__ == "__main__":
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    nbformat.write(build(src), dst)
    print(f"wrote {dst}")
