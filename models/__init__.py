"""Loom's own small parallel-reasoning model: data recipe, tokenizer, training, evaluation."""
