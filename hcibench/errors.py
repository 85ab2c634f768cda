"""Errors that are the user's to fix: the CLI prints them as one line and exits with status 2."""

import difflib


class UsageError(Exception):
    """Bad input: an unknown name, a missing file, an impossible option combination."""


def unknown_name(kind: str, name: str, known: list[str]) -> UsageError:
    """An error for an unknown ``name`` of ``kind`` listing what exists, with the closest match."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.4)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    available = ", ".join(sorted(known)) or "none installed"
    return UsageError(f"unknown {kind} '{name}'.{hint} Available: {available}.")
