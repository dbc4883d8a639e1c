"""What a simulated model writes: documents, continued where a prompt leaves off.

A document is the whole text of one job as the model writes it sequentially: the prompt, then
the completion, ending with EOS (recorded from a real engine, made from the shipped model's
training traces, or synthetic). A prompt that a document begins with continues with the rest of
that document; any other prompt (a thread's: the shared prefix plus its own header) continues
after the longest tail of it found in a document sharing its first tokens, so a forked thread
writes its own part of the document, and a joined context (which the published formats lay out
as the sequential text) continues as the document does. A prompt no document knows gets filler
tokens until its request's length ends it. Matching works on token ids, each mapped to one
character, so Python's string search does the work.
"""
from __future__ import annotations

import json
from pathlib import Path

KEY_TOKENS = 8  # documents are found by their first tokens (after BOS)
MIN_TAIL = 3  # (among documents with the prompt's first tokens) a shorter tail is no evidence


class ScriptError(ValueError):
    pass


def _chars(ids: list[int]) -> str:
    return "".join(map(chr, ids))


class Script:
    def __init__(self, documents: list[list[int]], eos: int | None, bos: int | None, filler: int):
        self.eos, self.bos, self.filler = eos, bos, filler
        self.by_key: dict[str, list[str]] = {}
        for ids in documents:
            text = _chars(self._body(ids))
            self.by_key.setdefault(text[:KEY_TOKENS], []).append(text)

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
        return cls(docs, eos, bos, (encode(".") or [0])[-1])

    def _body(self, ids: list[int]) -> list[int]:
        return ids[1:] if ids and self.bos is not None and ids[0] == self.bos else ids

    def continuation(self, prompt: list[int]) -> list[int] | None:
        """The tokens the model writes after ``prompt``, up to and with its EOS; None for a
        prompt no document knows (the caller writes filler)."""
        text = _chars(self._body(prompt))
        candidates = self.by_key.get(text[:KEY_TOKENS], [])
        for doc in candidates:
            if doc.startswith(text):
                return [ord(c) for c in doc[len(text):]]
        tail, doc = max(((_longest_tail(text, doc), doc) for doc in candidates), default=(0, ""))
        if tail < MIN_TAIL:
            return None
        return [ord(c) for c in doc[doc.find(text[len(text) - tail:]) + tail:]]


def _longest_tail(text: str, doc: str) -> int:
    """The length of the longest tail of ``text`` found in ``doc`` (a shorter one always is)."""
    lo, hi = 0, min(len(text), len(doc))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if text[len(text) - mid:] in doc else (lo, mid - 1)
    return lo
