"""Convert the chapters (jupytext MyST .md) to .ipynb in an output folder outside the sources.

Usage: python tools/convert_notebooks.py SRC_DIR OUT_DIR
nbval executes the .ipynb copies; the .md files stay the only source.
"""
from __future__ import annotations

import sys
from pathlib import Path

import jupytext


def convert(src: Path, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for md in sorted(src.glob("*.md")):
        nb = jupytext.read(md)
        if nb.metadata.get("jupytext", {}).get("text_representation", {}).get("format_name") != "myst":
            continue  # a plain markdown file (e.g. a README), not a chapter
        target = out / (md.stem + ".ipynb")
        jupytext.write(nb, target)
        written.append(target)
    return written


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python tools/convert_notebooks.py SRC_DIR OUT_DIR")
    paths = convert(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"converted {len(paths)} notebooks into {sys.argv[2]}")
