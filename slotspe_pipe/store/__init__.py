"""The data contracts of DESIGN.md: every reader and writer of a pipeline store goes through here.

- ``atomic``: temp-path-then-rename for files and directories.
- ``zarr_group``: kind tag + completion marker shared by all Zarr stores.
- ``tiles``, ``features``, ``omics``: one module per store layout.

Submodules are imported where used (``from slotspe_pipe.store.atomic import write_json``), so a
light stage such as preflight does not pay for importing zarr.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "atomic_path": "slotspe_pipe.store.atomic",
    "write_json": "slotspe_pipe.store.atomic",
    "write_text": "slotspe_pipe.store.atomic",
    "StoreError": "slotspe_pipe.store.zarr_group",
    "is_complete": "slotspe_pipe.store.zarr_group",
    "open_group": "slotspe_pipe.store.zarr_group",
    "write_group": "slotspe_pipe.store.zarr_group",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'slotspe_pipe.store' has no attribute {name!r}")
