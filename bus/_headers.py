"""NATS header parsing that keeps a repeated header visible, so a repeated signed header is refused.

A NATS header block may carry one name on several lines. nats-py folds them
into a dict where the last line wins (and its message-get path, through
``email.parser``, folds them its own way), so two readers could see different
``Tb-Sig`` or ``Tb-Decision`` values in one stored message, and neither would
know there was a choice. Every client of the bus (:mod:`bus._client`) parses
header blocks with :func:`parse_header_lines`, which joins the values of a
repeated name with a CRLF, which no single header line can contain, and
:func:`check_signed_headers` (part of opening an envelope) refuses a
repeated signed header as ``malformed``. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from trustbus.bus._errors import Malformed

REPEATED = "\r\n"  # joins the values of a repeated header name: never inside one header line
SIGNED_HEADERS = ("Tb-Sig", "Tb-Key", "Tb-Csig", "Tb-Ckey", "Tb-Decision", "Tb-Taint")
_WHITESPACE = re.compile(r"\s")  # what str.isspace() calls whitespace, found in C rather than char by char


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """``Name: value`` lines (after the ``NATS/1.0`` line) as a dict; a repeated name's values joined by CRLF.

    Lines are read as nats-py reads them: split on the first colon, the name
    ASCII without whitespace (otherwise the line is skipped), the value
    stripped and decoded as UTF-8 with replacement.
    """
    out: dict[str, str] = {}
    for line in raw.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        try:
            key = name.strip().decode("ascii")
        except UnicodeDecodeError:
            continue
        if not key or _WHITESPACE.search(key):
            continue
        text = value.strip().decode("utf-8", "replace")
        out[key] = f"{out[key]}{REPEATED}{text}" if key in out else text
    return out


def check_signed_headers(headers: Mapping[str, str]) -> None:
    """Raise ``Malformed`` if a signed header (``Tb-Sig``, ``Tb-Csig``, ...) came on more than one line."""
    try:
        for value in headers.values():
            if REPEATED in value:
                break
        else:
            return  # no header came on more than one line, so no signed one did (one pass, no lookups)
    except TypeError:
        pass  # a value that is not text: look at the signed headers alone, as below
    for name in SIGNED_HEADERS:
        if REPEATED in headers.get(name, ""):
            raise Malformed(f"repeated {name} header: a signed header must appear once")
