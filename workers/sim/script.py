"""What a simulated model writes: documents, continued where a prompt leaves off.

A document is the whole text of one job as the model writes it sequentially: the prompt, then
the completion, ending with EOS (recorded from a real engine, made from the shipped model's
training traces, or synthetic). A prompt that a document begins with continues with the rest of
that document; any other prompt (a thread's: the shared prefix plus its own header) continues
after the longest tail of it found in a document sharing its first tokens, so a forked thread
writes its own part of the document, and a joined context (which the published formats lay out
as the sequential text) continues as the document does. A prompt no document knows gets filler
tokens until its request's length ends it. Documents are found by their first line (their
question); among those with the same first line, a prompt belongs to the one sharing the
longest prefix with it (a thread's prompt is its own document's prefix plus its header).
Matching works on token ids, each mapped to one character, so Python's string search does it.
"""
from __future__ import annotations

import json
from pathlib import Path

KEY_TOKENS = 256  # documents are found by their first line, if it ends within this many tokens
MIN_TAIL = 3  # (in the prompt's own document) a shorter tail is no evidence


class ScriptError(ValueError):
    pass


def _chars(ids: list[int]) -> str:
    return "".join(map(chr, ids))


class Script:
    def __init__(self, documents: list[list[int]], eos: int | None, bos: int | None, newline: int | None,
                 filler: int):
        self.eos, self.bos, self.filler = eos, bos, filler
        self.newline = chr(newline) if newline is not None else None
        self.by_key: dict[str, list[str]] = {}
        for ids in documents:
            text = _chars(self._body(ids))
            self.by_key.setdefault(self._key(text), []).append(text)

    def _key(self, text: str) -> str:
        """The first line, newline included; a text without one in KEY_TOKENS: itself, up to there."""
        end = text.find(self.newline, 0, KEY_TOKENS) if self.newline else -1
        return text[:end + 1] if end >= 0 else text[:KEY_TOKENS]

    @classmethod
    def load(cls, path: str, encode, eos: int | None, bos: int | None) -> Script:
        """Documents from a JSONL file, one ``{"text": ...}`` per line (the model's EOS follows
        each), encoded by ``encode`` (text -> ids, no special tokens); "" is no documents."""
        docs = []
        if path:
            if not Path(path).is_file():
                raise ScriptError(f"sim_documents: no file {path}")
            for n, line in enumerate(Path(path).read_text().splitlines(), 1):
                if line.strip():
                    try:
                        docs.append(encode(json.loads(line)["text"]) + ([eos] if eos is not None else []))
                    except (json.JSONDecodeError, KeyError, TypeError) as e:
                        raise ScriptError(f"{path}:{n}: not a {{\"text\": ...}} line ({e})") from e
        newline = encode("\n")
        return cls(docs, eos, bos, newline[0] if len(newline) == 1 else None, (encode(".") or [0])[-1])

    def _body(self, ids: list[int]) -> list[int]:
        return ids[1:] if ids and self.bos is not None and ids[0] == self.bos else ids

    def continuation(self, prompt: list[int]) -> list[int] | None:
        """The tokens the model writes after ``prompt``, up to and with its EOS; None for a
        prompt no document knows (the caller writes filler)."""
        text = _chars(self._body(prompt))
        candidates = self.by_key.get(self._key(text))
        if not candidates:
            return None
        doc = max(candidates, key=lambda d: _common_prefix(text, d))
        if doc.startswith(text):
            return [ord(c) for c in doc[len(text):]]
        tail = _longest_tail(text, doc)
        if tail < MIN_TAIL:
            return None
        return [ord(c) for c in doc[doc.find(text[len(text) - tail:]) + tail:]]


def _common_prefix(text: str, doc: str) -> int:
    return _largest(min(len(text), len(doc)), lambda n: doc.startswith(text[:n]))


def _longest_tail(text: str, doc: str) -> int:
    """The length of the longest tail of ``text`` found in ``doc`` (a shorter one always is)."""
    return _largest(min(len(text), len(doc)), lambda n: text[len(text) - n:] in doc)


def _largest(most: int, holds) -> int:
    """The largest n in 0..``most`` for which ``holds(n)``, where it holds for every n below one
    that holds (bisection)."""
    lo, hi = 0, most
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if holds(mid) else (lo, mid - 1)
    return lo
