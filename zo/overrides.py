"""Hydra's own command-line errors, told in one line that names the key or value and the fix.

Hydra answers a typo'd key (`train.stpes=2`), a value split by the shell (`hydra.run.dir=run dir`
unquoted) or a value outside its override grammar with several lines and a hint to set
HYDRA_FULL_ERROR=1. launch.py lets those errors reach it as exceptions and prints `one_line`
instead; an error this module does not know keeps Hydra's own report.
"""

from __future__ import annotations

import difflib

GRAMMAR = "https://hydra.cc/docs/advanced/override_grammar/basic/"


def override_key(override: str) -> str:
    """The dotted key of a command-line override: `+train.steps=5` and `~train.steps` give train.steps."""
    return override.partition("=")[0].lstrip("+~")


def one_line(err: BaseException, args: list[str]) -> str | None:
    """The one-line message for Hydra's error `err` about command line `args`, or None."""
    from hydra.errors import ConfigCompositionException, OverrideParseException

    if isinstance(err, OverrideParseException):
        return unreadable(args, first_line(err))
    if isinstance(err, ConfigCompositionException):
        cause = err.__cause__
        parent, key = getattr(cause, "parent_node", None), getattr(cause, "full_key", None)
        if key and hasattr(parent, "keys") and "not in struct" in str(cause):
            return unknown_key(str(key), [str(k) for k in parent])
        return f"{first_line(err)}{f' ({first_line(cause)})' if cause else ''}"
    return None


def first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def unknown_key(key: str, siblings: list[str]) -> str:
    """`train.stpes is not a key of train; did you mean train.steps?` with the closest known keys."""
    section, _, leaf = key.rpartition(".")
    where = f" of {section}" if section else ""
    close = difflib.get_close_matches(leaf, siblings, n=3, cutoff=0.7)
    named = [f"{section}.{k}" if section else k for k in close]
    if named:
        return f"{key} is not a key{where}; did you mean {' or '.join(named)}?"
    if not siblings:  # a free-form dict (model.arch): a new key is added with +
        return f"{key} is not a key{where}, which is empty here: add it with +{key}=..."
    return f"{key} is not a key{where}; its keys: {', '.join(sorted(siblings))}"


def unreadable(args: list[str], hydra_says: str) -> str:
    """Which word of the command line Hydra could not read, and how to write it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for i, arg in enumerate(args):
        if arg.startswith("-"):
            continue
        try:
            parser.parse_override(arg)
        except Exception as err:  # OverrideParseException, or the grammar's own
            if "=" not in arg:
                before = args[i - 1] if i and "=" in args[i - 1] else None
                example = f"'{before} {arg}'" if before else "'key=a value'"
                return f"'{arg}' is not key=value: a value with a space must be quoted whole, e.g. {example}"
            key, _, value = arg.partition("=")
            hint = (
                "write dict keys without quotes, e.g. {0: ' bad', 1: ' good'}, and " if "{" in value else ""
            )
            return (
                f"cannot read the value of {key} ({first_line(err)}): {hint}quote the whole override for "
                f"the shell (override grammar: {GRAMMAR})"
            )
    return f"{hydra_says} (override grammar: {GRAMMAR})"
