"""Chunked linear cross-entropy (train/loss.py): the plain form's loss and gradients (hidden states and head),
with ignored targets (SFT's prompt masks), under bf16 autocast, through the training module, and without ever
keeping full logits for backward."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model_config

from train.config import load_config
from train.loss import IGNORE, chunked_cross_entropy, plain_cross_entropy
from train.module import LanguageModel


def inputs(N=37, D=16, V=50, ignore_every=0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    h, w = torch.randn(N, D, generator=gen), torch.randn(V, D, generator=gen) * 0.3
    t = torch.randint(0, V, (N,), generator=gen)
    if ignore_every:
        t[::ignore_every] = IGNORE
    return h, w, t


def loss_and_grads(fn, h, w, t, **kw):
    h, w = h.clone().requires_grad_(), w.clone().requires_grad_()
    loss = fn(h, w, t, **kw)
    loss.backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("chunk", [1, 5, 16, 37, 100])
@pytest.mark.parametrize("ignore_every", [0, 3])
def test_equals_plain_cross_entropy_fp32(chunk, ignore_every):
    h, w, t = inputs(ignore_every=ignore_every)
    loss, gh, gw = loss_and_grads(chunked_cross_entropy, h, w, t, chunk=chunk)
    ref_loss, ref_gh, ref_gw = loss_and_grads(plain_cross_entropy, h, w, t)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(gh, ref_gh, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gw, ref_gw, rtol=1e-5, atol=1e-6)


def test_ignored_rows_and_whole_chunks_get_no_gradient():
    h, w, t = inputs(N=12)
    t[:4] = IGNORE  # the first chunk entirely
    loss, gh, gw = loss_and_grads(chunked_cross_entropy, h, w, t, chunk=4)
    assert torch.all(gh[:4] == 0) and gh[4:].abs().sum() > 0
    torch.testing.assert_close(loss, plain_cross_entropy(h, w, t), rtol=1e-6, atol=1e-5)
    t[:] = IGNORE
    loss, gh, gw = loss_and_grads(chunked_cross_entropy, h, w, t, chunk=5)
    assert loss == 0 and torch.all(gh == 0) and torch.all(gw == 0)


def test_scaled_gradient_and_no_grad_path():
    h, w, t = inputs(ignore_every=4)
    hc, wc = h.clone().requires_grad_(), w.clone().requires_grad_()
    (chunked_cross_entropy(hc, wc, t, chunk=8) * 0.25).backward()  # the backward scales by the incoming gradient
    hp, wp = h.clone().requires_grad_(), w.clone().requires_grad_()
    (plain_cross_entropy(hp, wp, t) * 0.25).backward()
    torch.testing.assert_close(hc.grad, hp.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(wc.grad, wp.grad, rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        torch.testing.assert_close(chunked_cross_entropy(h, w, t, chunk=8), plain_cross_entropy(h, w, t),
                                   rtol=1e-6, atol=1e-5)
    frozen = chunked_cross_entropy(h.clone().requires_grad_(), w, t, chunk=8)  # a frozen head (LoRA): h only
    frozen.backward()


def test_bf16_autocast_is_as_accurate_as_the_plain_form_under_autocast():
    h, w, t = inputs(N=64, D=32, V=96, ignore_every=5)
    exact = loss_and_grads(plain_cross_entropy, h, w, t)  # fp32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        chunked = loss_and_grads(chunked_cross_entropy, h, w, t, chunk=16)
        plain = loss_and_grads(plain_cross_entropy, h, w, t)
    assert chunked[0].dtype == torch.float32 and chunked[1].dtype == h.dtype and chunked[2].dtype == w.dtype
    torch.testing.assert_close(chunked[0], plain[0], rtol=1e-4, atol=1e-3)  # the same bf16 logits, fp32 loss
    for ours, theirs, ref in zip(chunked[1:], plain[1:], exact[1:]):  # bf16 rounding, in another order
        assert (ours - ref).abs().max() <= 1.5 * (theirs - ref).abs().max() + 1e-6
        torch.testing.assert_close(ours, theirs, rtol=0.05, atol=1e-2)


def test_no_full_logits_are_kept_for_backward():
    N, V = 64, 200
    h, w, t = inputs(N=N, D=8, V=V)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x.numel()) or x, lambda x: x):
        chunked_cross_entropy(h.requires_grad_(), w.requires_grad_(), t, chunk=16)
    assert saved and max(saved) < N * V  # dL/dh (N, D) and dL/dW (V, D); the plain form keeps (N, V)
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x.numel()) or x, lambda x: x):
        plain_cross_entropy(h, w, t)
    assert max(saved) == N * V


def module(ce_chunk: int, tie: bool = True) -> LanguageModel:
    cfg = load_config(None, {})
    cfg.model = tiny_model_config(tie_embeddings=tie, vocab_size=97)
    cfg.train.ce_chunk = ce_chunk
    torch.manual_seed(0)
    return LanguageModel(cfg)


@pytest.mark.parametrize("tie", [True, False])
def test_training_loss_and_gradients_match_plain_with_sft_masks(tie):
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 97, (3, 20), generator=gen)
    y = torch.randint(0, 97, (3, 20), generator=gen)
    y[:, :7] = IGNORE  # a prompt: not scored (finetune/ and data/sft.py mask prompts with -100)
    y[2, 15:] = IGNORE  # padding
    results = []
    for chunk in (0, 8):
        m = module(chunk, tie)
        assert m.ce_chunk == chunk
        loss, logs = m.compute_loss((x, y))
        loss.backward()
        results.append((loss.detach(), logs["train/loss"], {n: p.grad for n, p in m.named_parameters()}))
    (plain, plain_lm, plain_grads), (chunked, chunked_lm, chunked_grads) = results
    torch.testing.assert_close(chunked, plain, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(chunked_lm, plain_lm, rtol=1e-6, atol=1e-6)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_a_lora_head_takes_the_plain_form_and_the_default_applies():
    from model.lora import LoRALinear
    m = module(8)
    m.model.lm_head = LoRALinear(m.model.lm_head, r=2, alpha=4)
    assert m.ce_chunk == 0
    assert load_config(None, {}).train.ce_chunk == 512  # on by default
