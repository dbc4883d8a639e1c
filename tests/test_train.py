"""The training loop's pieces: per-token loss weights, the weighted loss, and a continued run."""
from __future__ import annotations

import json
import random

import pytest
import torch

from models import task, train
from models import tokenizer as chartok

TINY = {"hidden": 16, "layers": 1, "heads": 2, "intermediate": 32, "batch": 4, "steps": 3, "warmup": 1,
        "max_minutes": 5.0}


def test_running_total_tokens_get_the_sum_weight_and_the_context_none():
    tok = chartok.build()
    q = task.parse_question("Q: 12*3+4")
    ex = train.encode(tok, q.prompt, task.trace(q), sum_weight=3.0)
    n_ctx = len(tok.encode(q.prompt).ids)
    assert ex.weights[:n_ctx] == [0.0] * n_ctx and ex.labels[:n_ctx] == [train.IGNORE] * n_ctx
    weighted = "".join(tok.decode([i]) for i, w in zip(ex.ids, ex.weights) if w == 3.0)
    assert weighted == task.sum_lines([36, 4]).replace("\n", "")
    assert set(ex.weights[n_ctx:]) == {1.0, 3.0}


def test_weighted_loss_with_unit_weights_is_the_models_own_loss():
    from transformers import LlamaForCausalLM

    tok = chartok.build()
    r = train.Recipe(**TINY)
    model = LlamaForCausalLM(train.model_config(r, 128, tok))
    ids, labels, weights, mask = next(train.batches(tok, r, random.Random(0)))
    weights = (labels != train.IGNORE).float()
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    assert torch.allclose(train.weighted_loss(out.logits, labels, weights), out.loss, atol=1e-5)


def test_without_a_mask_the_real_tokens_get_the_logits_they_get_with_one():
    """Training runs without an attention mask: padding is on the right, so causal attention never
    lets a real token see a pad, and its logits are the masked run's."""
    from transformers import LlamaForCausalLM

    tok = chartok.build()
    r = train.Recipe(**TINY, pad_to=64)
    model = LlamaForCausalLM(train.model_config(r, 128, tok)).eval()
    ids, _labels, _weights, mask = next(train.batches(tok, r, random.Random(0)))
    assert not mask.all()  # the batch has padding to get wrong
    with torch.no_grad():
        masked, unmasked = model(input_ids=ids, attention_mask=mask).logits, model(input_ids=ids).logits
    real = mask.bool()
    assert torch.allclose(masked[real], unmasked[real], atol=1e-5)


def test_the_answer_line_gets_the_answer_weight_in_both_formats():
    from models import task_mv

    tok = chartok.build()
    for fmt, q in ((task, task.parse_question("Q: 12*3+4*5")), (task_mv, task_mv.parse_question("Q: 345*67+8"))):
        ex = train.encode(tok, q.prompt, fmt.trace(q), sum_weight=3.0, answer_weight=2.0)
        weighted = "".join(tok.decode([i]) for i, w in zip(ex.ids, ex.weights) if w == 2.0)
        assert weighted == f"A: {q.answer}"


def test_padded_batches_hold_the_same_examples_at_a_multiple_of_pad_to():
    """pad_to only adds padding (a few lengths for the CPU kernels to see, not hundreds): the
    same examples, masked the same, each batch as long as a multiple of it."""
    tok = chartok.build()
    plain, padded = (train.batches(tok, train.Recipe(**TINY, pad_to=p), random.Random(3)) for p in (1, 64))
    for _ in range(8):
        (ids, labels, weights, mask), (pids, plabels, pweights, pmask) = next(plain), next(padded)
        n = ids.shape[1]
        assert pids.shape[1] % 64 == 0 and n <= pids.shape[1] < n + 64
        assert torch.equal(pids[:, :n], ids) and torch.equal(plabels[:, :n], labels)
        assert torch.equal(pweights[:, :n], weights) and torch.equal(pmask[:, :n], mask)
        assert not pmask[:, n:].any() and (plabels[:, n:] == train.IGNORE).all() and not pweights[:, n:].any()


def test_a_pad_to_below_1_is_named(capsys):
    with pytest.raises(SystemExit):
        train.main(["--pad-to", "0"])
    assert "--pad-to must be at least 1" in capsys.readouterr().err


def test_product_heavy_draw_reaches_every_product_count():
    rng = random.Random(3)
    qs = [task.random_question(rng, product_p=0.75, digit_weights=[0, 0, 1]) for _ in range(2000)]
    counts = {k: sum(len(q.products) == k for q in qs) for k in range(6)}
    assert all(counts.values())
    assert counts[4] + counts[5] > 0.16 * len(qs)  # expected 0.19; 0.11 with products uniform in 0..terms
    assert all(len(str(t.a)) <= 3 for q in qs for t in q.terms)
    assert sum(t.a >= 100 for q in qs for t in q.terms) > 0.8 * sum(len(q.terms) for q in qs)


def test_a_continued_run_starts_from_the_saved_weights_and_records_both_recipes(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    train.train(train.Recipe(**TINY), first)
    train.train(train.Recipe(**{**TINY, "steps": 1, "lr": 0.0, "init": str(first)}), second)
    recipe = json.loads((second / "recipe.json").read_text())
    assert recipe["init_recipe"]["recipe"]["init"] == "" and recipe["recipe"]["init"] == str(first)
    from safetensors.torch import load_file

    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # lr 0: weights unchanged, so they were loaded


def test_the_learning_rate_anneals_by_the_last_step_or_the_minute_cap_whichever_is_first():
    r = train.Recipe(lr=1e-3, warmup=10, steps=1000, max_minutes=30.0)
    assert train.lr_at(0, r) == 1e-4
    assert train.lr_at(10, r) == 1e-3
    assert train.lr_at(999, r, minutes=1.0) == pytest.approx(5e-5, rel=1e-3)  # by steps
    assert train.lr_at(100, r, minutes=30.0) == pytest.approx(5e-5)  # by the cap
    assert train.lr_at(100, r, minutes=15.0) < train.lr_at(100, r, minutes=1.0)


def test_copied_terms_get_the_copy_weight_in_both_formats():
    from models import task_mv

    tok = chartok.build()
    q = task_mv.parse_question("Q: 345*67+89+12*3")
    ex = train.encode(tok, q.prompt, task_mv.trace(q), sum_weight=3.0, copy_weight=2.0)
    runs = "".join(tok.decode([i]) if w == 2.0 else "|" for i, w in zip(ex.ids, ex.weights))
    copied = [r for r in runs.split("|") if r]
    # the term lines, the outlines and the paths' restatements, nested ones included
    want = ["a 345*67", "b 89", "c 12*3"] + ["a 345*67", "c 12*3"] * 2 + ["a1 345*7", "a2 345*6"] * 2
    assert sorted(copied) == sorted(want)
    summed = "".join(tok.decode([i]) for i, w in zip(ex.ids, ex.weights) if w == 3.0)
    assert summed.endswith(f"A={345 * 67 + 89 + 36:06d}")


def test_a_boolean_recipe_flag_takes_0_or_1_and_names_a_bad_value(capsys):
    with pytest.raises(SystemExit):
        train.main(["--compile", "maybe"])
    assert "expected 0, 1, true or false, got 'maybe'" in capsys.readouterr().err
