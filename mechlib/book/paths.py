"""Where the book's sources and outputs are: one rule, used by every command.

The project root is ``$MECHLIB_ROOT``; else the nearest folder, from the current directory
up, that holds ``_toc.yml`` and ``chapters/``; else the checkout this package was
installed from (an editable install)."""
from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_CHECKOUT = Path(__file__).resolve().parents[2]


def _is_root(path: Path) -> bool:
    return (path / "_toc.yml").is_file() and (path / "chapters").is_dir()


def project_root() -> Path:
    """The book's root folder; a clear error when there is none."""
    if os.environ.get("MECHLIB_ROOT"):
        root = Path(os.environ["MECHLIB_ROOT"]).expanduser().resolve()
        if not _is_root(root):
            raise FileNotFoundError(f"MECHLIB_ROOT={str(root)!r} holds no _toc.yml and chapters/ (a checkout of the book)")
        return root
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if _is_root(folder):
            return folder
    if _is_root(_PACKAGE_CHECKOUT):
        return _PACKAGE_CHECKOUT
    raise FileNotFoundError("no book checkout found: run from a folder of the book's repository, or set MECHLIB_ROOT")


def executed_dir() -> Path:
    """Where executed chapters go for Jupyter Book to render: ``<project root>/book/executed``
    (not committed). The source notebooks are ``chapters/``; their code is ``mechlib.chapters``."""
    return project_root() / "book" / "executed"


def run_store() -> Path:
    """``$MECHLIB_RUN_STORE``, else ``<project root>/_build/runs``; outside any checkout
    (a Colab session with the package installed), ``./_build/runs``."""
    if os.environ.get("MECHLIB_RUN_STORE"):
        store = Path(os.environ["MECHLIB_RUN_STORE"]).expanduser()
        if not store.is_absolute():  # pinned, as the cache is, so a kernel in another folder writes here too
            store = store.absolute()
            os.environ["MECHLIB_RUN_STORE"] = str(store)
        return store
    try:
        return project_root() / "_build" / "runs"
    except FileNotFoundError:
        return Path.cwd() / "_build" / "runs"


try:
    ROOT = project_root()
except FileNotFoundError:
    ROOT = _PACKAGE_CHECKOUT
