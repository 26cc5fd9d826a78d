"""The embedded default corpus: the Python standard library's own sources, read at run time.

Every Python install carries a few megabytes of real, varied text nobody wrote for this project
(code, comments and docstrings in English), so `wmzoo train` works offline with no download and
nothing copied into this repository. The text depends on the Python version; within one install
it is always the same files in the same order.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

# The top-level modules of the standard library (no packages, no tests): about 4.7 MB on 3.11.
DEFAULT_MAX_BYTES = 8 << 20


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_documents(max_bytes: int = DEFAULT_MAX_BYTES) -> list[tuple[str, str]]:
    """(name, text) of the standard library's top-level ``.py`` files, in name order, until
    ``max_bytes`` of text are collected."""
    root = stdlib_dir()
    files = sorted(root.glob("*.py"))
    if not files:
        raise FileNotFoundError(
            f"embedded corpus: expected the standard library's .py sources under {root}, found none "
            "(a Python without sources); pass --data with a text file or directory instead"
        )
    docs, total = [], 0
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        if total + len(text) > max_bytes:
            break
        docs.append((path.name, text))
        total += len(text)
    return docs
