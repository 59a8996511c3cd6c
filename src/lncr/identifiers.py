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
#: Most file systems refuse a file name longer than this (bytes).
FILE_SYSTEM_NAME = 255
#: What lncr adds to a name while it writes the file: ``.NAME.<pid>.partial``.
PARTIAL_EXTRA = len("..4194304.partial")
#: A message longer than this is cut: an echoed value never floods the terminal.
MESSAGE_LIMIT = 400


def file_name(value: str) -> str:
    """``value`` as one safe, reversible path component (see the module docstring)."""
    name = quote(str(value), safe="-_.")
    return "%2E" + name[1:] if name.startswith(".") else name


def joined_name_problem(patient_id: str, stain: str) -> str | None:
    """Why the file names lncr builds from a patient and a stain together (the QC thumbnail
    ``<patient>_<stain>.png``, while written ``.<name>.<pid>.partial``) do not fit a file
    system, or None."""
    name = f"{file_name(patient_id)}_{file_name(stain)}.png"
    size = len(name.encode()) + PARTIAL_EXTRA
    if size <= FILE_SYSTEM_NAME:
        return None
    return (f"make a file name of {size} bytes ({shown(name, 60)} while written); most file "
            f"systems stop at {FILE_SYSTEM_NAME}")


def shown(text: str, limit: int = MESSAGE_LIMIT) -> str:
    r"""``text`` safe to print in one line: control and invisible formatting characters
    escaped (``\x00``, ``\u200d``), and cut after ``limit`` characters with the count of the
    rest.

    >>> shown("a\x00b")
    'a\\x00b'
    >>> shown("c" * 12, 5)
    'ccccc… (7 more characters)'
    """
    out = "".join(c.encode("unicode_escape").decode() if unicodedata.category(c).startswith("C")
                  and c != "\n" else c for c in text)
    if len(out) > limit:
        return f"{out[:limit]}… ({len(out) - limit} more characters)"
    return out


def identifier(name: str) -> str:
    """The identifier a :func:`file_name` stands for."""
    return unquote(name)


def nfc(value: str) -> str:
    """``value`` in Unicode's composed form (NFC): the same name typed on macOS (which writes
    ``ü`` as ``u`` + a combining diaeresis) and elsewhere reads as one name."""
    return unicodedata.normalize("NFC", value)


def character_name(c: str) -> str:
    """``U+200D (ZERO WIDTH JOINER)``: a character named so that a reader can find it."""
    return f"U+{ord(c):04X} ({unicodedata.name(c, 'unnamed')})"


def identifier_problem(value: str) -> str | None:
    """Why ``value`` cannot be an identifier, or None when it can."""
    if not value.strip():
        return "is empty"
    bad = [c for c in value if unicodedata.category(c).startswith("C")]
    if bad:
        kind = ("an invisible formatting character" if unicodedata.category(bad[0]) == "Cf"
                else "a control character")
        return f"holds {kind}, {character_name(bad[0])}; remove it"
    if len(file_name(value).encode()) > MAX_NAME:
        return f"is too long for a file name ({len(value)} characters); shorten it"
    return None
