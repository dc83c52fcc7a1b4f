"""The order unit documents are listed in (natural order of their ids: layout.natural_key),
with a sort key small enough to hold for a million documents.

layout.natural_key gives a list of tuples, one per run of digits or of other characters:
about 2.5 KB for a trace id ("tr-" and 32 hex digits), so sorting a million trace documents
by it held 2.5 GB of keys. `compact_key` is one string that compares the same way (equal
exactly when natural_key is equal): about 100 bytes for a trace id.
"""
from __future__ import annotations

import re
from typing import Iterable

from trackport.bundle.layout import UNIT_SUFFIX, unit_id_from_name

_PARTS = re.compile(r"(\d+)")
# Inside a text part, the two lowest characters are escaped, so that "\0" can end the part:
# a text part that is a prefix of another then sorts first, as in natural_key.
_ESCAPES = str.maketrans({"\0": "\1\1", "\1": "\1\2"})


def compact_key(text: str) -> str:
    """A string key ordering texts as layout.natural_key does. re.split alternates text
    and digit parts (text first and last), so natural_key compares text with text (as
    strings) and digits with digits (as numbers), and a key that ends first sorts first.
    A text part is written escaped and ended with "\\0"; a number as the count of its
    digits (one character) and its digits without leading zeros, so a longer number is
    larger and equal numbers are written alike."""
    out = []
    for i, part in enumerate(_PARTS.split(text)):
        if i % 2:
            digits = str(int(part))
            out.append(chr(1 + len(digits)) + digits)
        else:
            out.append(part.translate(_ESCAPES) + "\0")
    return "".join(out)


def name_key(name: str) -> str:
    """The key of a unit's file name (layout.unit_name: its document's name without .json)."""
    return compact_key(unit_id_from_name(name))


def document_key(file_name: str) -> str:
    """The key of a unit document's file name (<unit_name>.json)."""
    return name_key(file_name[: -len(UNIT_SUFFIX)])


def sorted_names(names: Iterable[str]) -> list[str]:
    """Unit file names (without .json) in the order readers list them. Memory: the list,
    and a key of about the name's size each while sorting."""
    return sorted(names, key=name_key)
