"""Which format a model is served in (orchestrator/plan/detect.py, cluster/runtime.py): what the
model's files say, else what its tokenizer tells; a format that does not fit is refused by name."""
from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from cluster.config import ConfigError, load
from cluster.runtime import declared_format, served_format
from orchestrator.plan.detect import FormatError, resolve

TW = {"<Outlines>", "</Outlines>", "<Outline>", "<Thread>", "</Thread>"}
MV = {"<Goal>", "</Goal>", "<Path>", "</Path>"}


@pytest.mark.parametrize("configured,declared,added,served", [
    (None, "multiverse", TW | MV, "multiverse"),  # the model says
    (None, None, TW, "threadweaver"),  # its tokenizer tells
    (None, None, MV, "multiverse"),
    ("threadweaver-conclusion", "threadweaver", TW | {"<Conclusion>"}, "threadweaver-conclusion"),  # the config wins
    ("apr", None, set(), "apr"),  # plain-text tags fit any tokenizer
])
def test_the_format_served(configured, declared, added, served):
    assert resolve(configured, declared, added) == served


@pytest.mark.parametrize("configured,declared,added,message", [
    ("threadweaver", None, MV, "no single token for <Outlines>, </Outlines>, </Thread>"),
    (None, None, TW | MV, "tags of threadweaver and multiverse"),
    (None, None, set(), "no plan format's tags"),
    (None, "bogus", TW, "unknown plan format 'bogus'"),
])
def test_a_format_that_does_not_fit_is_named(configured, declared, added, message):
    with pytest.raises(FormatError, match=message):
        resolve(configured, declared, added)


def test_the_shipped_models_declare_their_formats_and_are_served_in_them():
    for model, fmt in (("loom-arith", "threadweaver"), ("loom-arith-mv", "multiverse")):
        cfg = load(overrides={"engine": {"model": model}})
        assert declared_format(cfg.model) == fmt
        assert served_format(cfg, AutoTokenizer.from_pretrained(cfg.model)) == fmt


class PlainTokenizer:
    """A tokenizer with no added tokens (a base model's, say)."""

    def get_added_vocab(self) -> dict:
        return {"<s>": 1, "</s>": 2}


def test_a_configured_format_the_tokenizer_cannot_stop_on_fails_at_start_up():
    with pytest.raises(ConfigError, match="format: .* no single token for </Goal>, </Path>"):
        served_format(load(overrides={"format": "multiverse"}), PlainTokenizer())
    with pytest.raises(ConfigError, match="format must be one of"):
        load(overrides={"format": "nope"})
