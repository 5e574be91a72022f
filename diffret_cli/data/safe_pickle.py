"""Load a pickle that is data only, never code.

Annotation pickles (MSVD's ``raw-captions.pkl``) come from the internet. A normal
``pickle.load`` imports and calls any global the file names (``os.system`` is one
opcode away), so loading one would run whatever its author wrote. The unpickler here
refuses every global: only the built-in containers and scalars that pickle builds
with its own opcodes, without a lookup (dict, list, tuple, str, bytes, int, float, bool,
None; sets and frozensets from protocol 4) can come out of it, and a file that names
any class or function is rejected with its name. (Python 3 ``bytes`` pickled with a
protocol below 3 go through ``_codecs.encode`` and are refused too; Python 2 ``str``
uses its own opcodes and loads.)
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

from diffret_cli.errors import AnnotationError

__all__ = ["safe_load", "safe_loads"]


class _DataOnlyUnpickler(pickle.Unpickler):
    """An unpickler whose global lookups all fail.

    ``find_class`` is the only way a pickle reaches a callable (GLOBAL, STACK_GLOBAL,
    INST, OBJ and the EXT opcodes all go through it), so refusing it here makes REDUCE,
    NEWOBJ and BUILD unreachable with anything but the plain containers. Persistent ids
    are refused too.
    """

    def __init__(self, file: io.BufferedIOBase, *, source: str, encoding: str):
        super().__init__(file, encoding=encoding)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle hook
        raise AnnotationError(
            f"{self._source}: refusing to load global {module}.{name}; this pickle would "
            "import and run code, and annotation pickles must hold only dicts, lists, "
            "tuples, str, bytes, numbers, bools and None",
            hint="get the annotation file from its official source; never load an "
            "annotation pickle that names classes or functions",
        )

    def persistent_load(self, pid: Any) -> Any:
        raise AnnotationError(
            f"{self._source}: refusing persistent id {pid!r}; annotation pickles must be "
            "plain data",
            hint="get the annotation file from its official source",
        )


def safe_loads(data: bytes, *, source: str = "<bytes>", encoding: str = "bytes") -> Any:
    """Unpickle ``data`` allowing plain data only.

    ``encoding="bytes"`` (the default) returns Python 2 ``str`` objects as ``bytes`` so
    the caller decodes them itself and can report a bad byte per item instead of
    failing the whole file. ``source`` names the file in errors.
    """
    if not data:
        raise AnnotationError(f"{source}: file is empty; expected a pickled dict",
                              hint="download the file again")
    try:
        return _DataOnlyUnpickler(io.BytesIO(data), source=source, encoding=encoding).load()
    except AnnotationError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a malformed file
        raise AnnotationError(
            f"{source}: not a readable pickle ({type(exc).__name__}: {exc}); the file is "
            "truncated or not a pickle",
            hint="download the file again (a partial download truncates it)",
        ) from exc


def safe_load(path: Path | str, *, encoding: str = "bytes") -> Any:
    """Read and unpickle the file at ``path`` (see :func:`safe_loads`)."""
    path = Path(path)
    return safe_loads(path.read_bytes(), source=str(path), encoding=encoding)
