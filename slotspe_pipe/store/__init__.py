"""The data contracts of DESIGN.md: every reader and writer of a pipeline store goes through here.

- ``atomic``: temp-path-then-rename for files and directories.
- ``zarr_group``: kind tag + completion marker shared by all Zarr stores.
- ``tiles``, ``features``, ``omics``: one module per store layout.
"""

from slotspe_pipe.store.atomic import atomic_path, write_json, write_text
from slotspe_pipe.store.zarr_group import StoreError, is_complete, open_group, write_group

__all__ = [
    "StoreError",
    "atomic_path",
    "is_complete",
    "open_group",
    "write_group",
    "write_json",
    "write_text",
]
