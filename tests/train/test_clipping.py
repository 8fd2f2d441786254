"""Gradient clipping is ours (LanguageModel.configure_gradient_clipping): the global norm the optimizer sees is
at most train.grad_clip; on CUDA, bf16-mixed with the fused AdamW trains (Lightning's plugin would refuse it)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_train_overrides

from train.config import load_config
from train.run import pretrain


def grad_norms_at_step(monkeypatch, corpus, out_dir, **overrides) -> list[float]:
    """Run a short pretraining and return the global gradient norm AdamW stepped with, step by step."""
    norms, step = [], torch.optim.AdamW.step

    def recording_step(self, closure=None):
        loss = closure() if closure is not None else None  # forward, backward and the clipping hook
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())
        step(self)
        return loss

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    pretrain(load_config(None, tiny_train_overrides(corpus, out_dir, **{"train.max_steps": 3, **overrides})))
    return norms


def test_global_grad_norm_is_clipped(monkeypatch, tiny_corpus, tmp_path):
    free = grad_norms_at_step(monkeypatch, tiny_corpus, tmp_path / "free", **{"train.grad_clip": 0.0})
    assert min(free) > 0.05  # unclipped gradients are larger than the limit below
    clipped = grad_norms_at_step(monkeypatch, tiny_corpus, tmp_path / "clipped", **{"train.grad_clip": 0.05})
    assert len(clipped) == 3 and max(clipped) == pytest.approx(0.05, rel=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_on_cuda_clips(monkeypatch, tiny_corpus, tmp_path, precision):
    norms = grad_norms_at_step(monkeypatch, tiny_corpus, tmp_path, **{
        "train.grad_clip": 0.05, "train.precision": precision, "train.accelerator": "gpu"})
    assert norms and max(norms) <= 0.05 * 1.01  # fp16: the scaler may skip a step with inf gradients
