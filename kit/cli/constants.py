"""The constants the command line offers as choices, read from the modules that own them without importing them.

:data:`FORMATS` is :data:`kit.models.imports.FORMATS` and :data:`OBJECTIVES` is :data:`kit.ssl.OBJECTIVES`: plain
literals in those files, read here from their source with :func:`ast.literal_eval`, because importing either
package imports torch (seconds) and ``kit --help`` must stay instant. One definition each; a test checks that
these equal the imported values.

Example:
    >>> FORMATS
    ('monai-ssl', 'brainsegfounder')
    >>> "swin_trio" in OBJECTIVES
    True
"""

from __future__ import annotations

import ast
from pathlib import Path

__all__ = ["FORMATS", "OBJECTIVES", "owner_constant"]

_KIT = Path(__file__).resolve().parents[1]


def owner_constant(path: str, name: str):
    """The literal assigned to ``name`` at the top level of ``kit/<path>``, read without running that file.

    Example:
        >>> owner_constant("stages.py", "STAGES")[0]
        '01_curation'
    """
    tree = ast.parse((_KIT / path).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise LookupError(f"kit/{path} assigns no literal {name}")


FORMATS: tuple[str, ...] = owner_constant("models/imports.py", "FORMATS")
OBJECTIVES: tuple[str, ...] = owner_constant("ssl/__init__.py", "OBJECTIVES")
