"""The shipped model's chat template renders any way of asking as the prompt it was trained on."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from models.task import parse_question
from models.tokenizer import CHAT_TEMPLATE

MODEL = Path(__file__).resolve().parent.parent / "models" / "loom-arith"


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(str(MODEL))


@pytest.mark.parametrize("content", ["905*9+14*3", "Q: 905*9+14*3", "  Q:905 * 9 + 14*3\n", "905*9 +14*3"])
def test_every_spelling_renders_the_trained_prompt(tok, content):
    text = tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                   add_generation_prompt=True)
    assert text == parse_question(content).prompt == "Q: 905*9+14*3\n"


def test_the_last_message_is_the_question(tok):
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "7*8"}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == "Q: 7*8\n"


def test_shipped_config_carries_the_source_template():
    assert json.loads((MODEL / "tokenizer_config.json").read_text())["chat_template"] == CHAT_TEMPLATE
