"""A character-level tokenizer in HF format; every plan tag is one token.

Single-token tags are what the released ThreadWeaver models do too; they also keep the
sequences short. Saved as tokenizer.json so transformers and vLLM load it offline.
"""
from __future__ import annotations

import json
import string
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from orchestrator.plan.published import FORMATS

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
CHARS = [c for c in string.printable if c not in "\t\r\x0b\x0c"]
# The last message as the task's prompt ``Q: <expr>\n`` (models.task.Question.prompt), whether the
# user wrote ``Q: 1*2 + 3`` or ``1*2+3``: a leading ``Q:`` and spaces are dropped, and the newline is
# an expression, since Jinja drops a template's own trailing newline.
CHAT_TEMPLATE = ("{%- set q = messages[-1]['content'] | trim -%}"
                 "{%- if q[:2] == 'Q:' -%}{%- set q = q[2:] -%}{%- endif -%}"
                 "{{- 'Q: ' + q | replace(' ', '') + '\\n' -}}")


def plan_tags() -> list[str]:
    tags: list[str] = []
    for fmt in FORMATS.values():
        if fmt.name == "apr":  # APR's markers are long phrases, spelled out in characters
            continue
        tags += [t for t in fmt.tags.all() if t not in tags]
    return tags


def build() -> Tokenizer:
    vocab_list = SPECIALS + plan_tags() + CHARS
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in plan_tags()])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])])
    return tok


def save(tok: Tokenizer, out: Path, max_len: int = 1024) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
        "model_max_length": max_len, "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}, indent=2) + "\n")
