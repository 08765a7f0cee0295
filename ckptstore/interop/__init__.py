"""Bringing framework checkpoint files into a store and writing stored checkpoints back out.

Public: ``ckptstore.import_checkpoint``, ``export_checkpoint`` and ``import_torch_file`` are the
verbs (also here); the helpers below serve framework adapters (Hugging Face folders, plain-data
conversion of Lightning checkpoints)::

    from ckptstore.interop import read_hf_folder, write_hf_folder, to_plain, from_plain
"""

from ._convert import from_plain, to_plain
from ._exporter import export_checkpoint
from ._hf_folder import read_hf_folder, write_hf_folder
from ._importer import import_checkpoint
from ._torchfile import import_torch_file

__all__ = [
    "export_checkpoint",
    "from_plain",
    "import_checkpoint",
    "import_torch_file",
    "read_hf_folder",
    "to_plain",
    "write_hf_folder",
]
