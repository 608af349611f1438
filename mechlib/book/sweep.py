"""Run a chapter over a grid of parameters, resumably.

Each grid point is validated before anything runs. A point whose run record already exists
(with its executed notebook) is skipped, so an interrupted sweep picks up where it stopped. Executed notebooks and run
records are written under temporary names and renamed when complete; leftovers of a killed
run (``.tmp-*``) are removed when the next sweep starts.
"""
from __future__ import annotations

import itertools
import os
from pathlib import Path

from ..chapters.base import ParamError
from .execute import check_chapter, execute_chapter
from .paths import project_root
from .runs import is_recorded, run_id, store_dir


def grid_points(grid: dict[str, list]) -> list[dict]:
    """The cartesian product of the grid, in a fixed order (keys sorted)."""
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ParamError(f"sweep grid: {key!r} needs a non-empty list of values, got {values!r}")
    keys = sorted(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def clean_stale(*folders: Path) -> list[Path]:
    removed = []
    for folder in folders:
        for tmp in Path(folder).glob("**/.tmp-*"):
            tmp.unlink()
            removed.append(tmp)
    return removed


def run_sweep(chapter: str, param_set: str | Path, grid: dict[str, list], out_dir: Path | None = None,
              store: Path | None = None, log=print) -> list[dict]:
    """Execute every grid point not yet recorded; return one status row per point."""
    out_dir = Path(out_dir or project_root() / "_build" / "sweeps") / chapter
    store = Path(store or store_dir())
    points = [(overrides, check_chapter(chapter, param_set, overrides).to_dict()) for overrides in grid_points(grid)]
    os.environ["MECHLIB_RUN_STORE"] = str(store)
    for stale in clean_stale(out_dir, store):
        log(f"[sweep] removed leftover {stale}")
    status = []
    for i, (overrides, params) in enumerate(points, 1):
        rid = run_id(chapter, params)
        if is_recorded(chapter, params, store) and (out_dir / f"{rid}.ipynb").is_file():
            log(f"[sweep] {i}/{len(points)} {overrides} already recorded ({rid}), skipped")
            status.append({"overrides": overrides, "id": rid, "status": "skipped"})
            continue
        log(f"[sweep] {i}/{len(points)} {overrides} running ({rid})")
        execute_chapter(chapter, param_set, overrides, out_dir=out_dir, out_name=rid)
        status.append({"overrides": overrides, "id": rid, "status": "ran"})
    return status
