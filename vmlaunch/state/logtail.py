"""An events log whose last line a killed append cut short (``atomicfile.append``): read
with that line as a comment, so that a rerun can load it, and nothing is dropped."""

from __future__ import annotations

import logging
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

log = logging.getLogger("statefile")


def without_torn_tail(path: Path, text: str) -> str:
    """The events log with a last line cut short (an append killed mid-write, see
    ``atomicfile.append``) turned into a comment: only for a text that ends mid-line and
    does not parse, but does that way. Nothing is dropped (a person's line without its
    newline may be the one); any other text is returned as it is, for its reader to judge."""
    if not text or text.endswith("\n") or _parses(text):
        return text
    whole, _, cut = text.rpartition("\n")
    mended = f"{whole}\n  # cut short: {cut.strip()}\n" if whole else text
    if not _parses(mended):
        return text
    log.warning("%s ended with a line cut short (an append killed mid-write?); it is kept "
                "as a comment: %r", path, cut.strip())
    return mended


def _parses(text: str) -> bool:
    try:
        YAML(typ="safe", pure=True).load(text)
    except YAMLError:
        return False
    return True
