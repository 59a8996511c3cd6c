"""Identifiers from the user's tables (patient IDs, stain names) as file names.

Every path lncr builds from an identifier goes through :func:`file_name`: the result is one
path component that cannot climb out of its folder, is the same for the same identifier and
different for different ones, and reads back with :func:`identifier`. Letters, digits, ``-``,
``_``, ``.`` and ``~`` stay as they are; every other character (``/``, ``\\``, ``:``, a
space, ``%`` …) and a leading ``.`` become ``%XX`` escapes (UTF-8 bytes), so
``LN/2019/001`` is stored as ``LN%2F2019%2F001`` and ``../../escape`` as
``%2E.%2F..%2Fescape``.

>>> file_name("LN/2019/001")
'LN%2F2019%2F001'
>>> file_name("../../escape")
'%2E.%2F..%2Fescape'
>>> identifier(file_name("/tmp/x")) == "/tmp/x"
True
"""

from __future__ import annotations

import unicodedata
from urllib.parse import quote, unquote

#: What lncr validate says is allowed in an identifier.
ALLOWED = ("any printable characters (letters, digits, '-', '_', '.' and '~' are kept in "
           "file names, others are escaped as %XX)")
#: A file name longer than this (bytes) is refused: most file systems stop at 255.
MAX_NAME = 200
#: First characters a spreadsheet program reads as the start of a formula.
FORMULA_START = ("=", "+", "-", "@")


def file_name(value: str) -> str:
    """``value`` as one safe, reversible path component (see the module docstring)."""
    name = quote(str(value), safe="-_.")
    return "%2E" + name[1:] if name.startswith(".") else name


def identifier(name: str) -> str:
    """The identifier a :func:`file_name` stands for."""
    return unquote(name)


def identifier_problem(value: str) -> str | None:
    """Why ``value`` cannot be an identifier, or None when it can."""
    if not value.strip():
        return "is empty"
    bad = [c for c in value if unicodedata.category(c).startswith("C")]
    if bad:
        return f"holds the control character {bad[0]!r}"
    if len(file_name(value).encode()) > MAX_NAME:
        return f"is too long for a file name ({len(value)} characters); shorten it"
    return None
