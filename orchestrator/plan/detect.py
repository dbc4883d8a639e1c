"""Which plan format a model speaks, from its own files, and whether a format fits it.

A model says its format in ``parallel_format`` (its generation_config.json or config.json); a
model that does not say is known by its tokenizer: the tags its authors' controller needs as
single tokens (ThreadWeaver's controller refuses to run without ``<Outlines>``, ``</Outlines>``
and ``</Thread>`` as one token each; Multiverse's engine stops on ``</Goal>`` and ``</Path>`` by
token id). APR's tags are plain text in any tokenizer, so an APR model must say so, or be
configured. A format that does not fit the model is an error at start-up (and a 400 for a
request that asks for it), never a model decoding sequentially because its stops never come.
"""
from __future__ import annotations

from orchestrator.plan.published import FORMATS

FORMAT_FIELD = "parallel_format"
SINGLE_TOKENS = {  # per format: the tags its controller needs as single tokens
    "threadweaver": ("<Outlines>", "</Outlines>", "</Thread>"),
    "threadweaver-conclusion": ("<Outlines>", "</Outlines>", "</Thread>", "<Conclusion>"),
    "multiverse": ("</Goal>", "</Path>"),
    "apr": (),
}
KNOWN_BY_TOKENS = ("threadweaver", "multiverse")  # the formats a tokenizer can tell apart


class FormatError(ValueError):
    pass


def missing_tokens(name: str, added: set[str]) -> list[str]:
    """The tags ``name`` needs as single tokens that the tokenizer lacks."""
    return [t for t in SINGLE_TOKENS[name] if t not in added]


def check(name: str, added: set[str], model: str = "the model") -> None:
    """FormatError when ``name`` is unknown or the tokenizer lacks a tag it needs."""
    if name not in FORMATS:
        raise FormatError(f"unknown plan format {name!r}; known: {', '.join(FORMATS)}")
    lacking = missing_tokens(name, added)
    if lacking:
        raise FormatError(f"{model}'s tokenizer has no single token for {', '.join(lacking)}: it was not trained "
                          f"on the {name} format (its controller stops on those tokens)")


def resolve(configured: str | None, declared: str | None, added: set[str], model: str = "the model") -> str:
    """The format to serve: the configured one, else the one the model declares, else the one its
    tokenizer's tags tell; checked against the tokenizer."""
    name = configured or declared or _by_tokens(added, model)
    check(name, added, model)
    return name


def _by_tokens(added: set[str], model: str) -> str:
    fits = [name for name in KNOWN_BY_TOKENS if not missing_tokens(name, added)]
    if len(fits) == 1:
        return fits[0]
    why = "its tokenizer has the tags of " + " and ".join(fits) if fits else "its tokenizer has no plan format's tags"
    raise FormatError(f"cannot tell which plan format {model} speaks ({why}, and it declares none in "
                      f"'{FORMAT_FIELD}'): set format: in the config")
