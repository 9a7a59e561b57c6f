"""Installed distributions' versions, read without importlib.metadata, whose import (its email
and zipfile machinery) costs a command-line start more than the rest of the lookup."""

from __future__ import annotations

import functools
import os
import sys


@functools.cache
def distribution_version(name: str) -> str:
    """The `Version:` of distribution `name`, from the first `NAME-VERSION.dist-info` on
    sys.path (as importlib.metadata finds it); importlib.metadata itself where there is none
    (an egg, a zip)."""
    prefix = name.replace("-", "_").lower() + "-"
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for found in names:
            if found.lower().startswith(prefix) and found.endswith(".dist-info"):
                try:
                    with open(os.path.join(entry or ".", found, "METADATA"),
                              encoding="utf-8") as f:
                        for line in f:
                            if line.startswith("Version:"):
                                return line.split(":", 1)[1].strip()
                            if not line.strip():
                                break  # the headers end here
                except OSError:
                    pass
    from importlib.metadata import version

    return version(name)


__all__ = ["distribution_version"]
