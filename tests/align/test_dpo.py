"""DPO end to end on the synthetic corpus: the LoRA policy trains while the reference (adapter off) stays the SFT
model bit for bit, full fine-tuning keeps a frozen copy, TRL-style metrics, loadable run directories."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from conftest import tiny_finetune_values
from safetensors.torch import load_file

from align.dpo import PairDataModule, main, train_dpo
from align.make_pairs import save_pairs
from align.policy import REFERENCE_DIR, align_config
from finetune.config import read_run_config
from model.lora import adapters_disabled, lora_parameters, merge_lora
from train.cli import run_cli
from train.generate.command import main as generate_main
from train.report import read_metrics
from train.rundir.load import load_run

METRICS = ["rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
           "logps/rejected", "loss"]


class Spy(L.Callback):
    """Keeps the module and the ids of the parameters the optimizer updates."""

    def on_train_start(self, trainer, pl_module):
        self.module = pl_module
        self.ids = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}


def dpo_values(corpus, sft_run, out, method="lora", **extra):
    return tiny_finetune_values(corpus, out, sft_run, {"method": method},
                                **{"train.name": f"dpo-{method}", "train.max_steps": 4, "train.val_every": 2, **extra})


@pytest.fixture(scope="module")
def lora_dpo(tiny_corpus, tiny_sft_run, tmp_path_factory):
    spy = Spy()
    cfg = align_config(None, dpo_values(tiny_corpus, tiny_sft_run[1], tmp_path_factory.mktemp("dpo")))
    return train_dpo(cfg, [spy]), spy


def test_lora_policy_trains_and_reference_is_the_sft_model(lora_dpo, tiny_sft_run):
    run_dir, spy = lora_dpo
    model = spy.module.model
    assert spy.ids == {id(p) for p in lora_parameters(model)}  # only the new adapter reaches AdamW
    assert spy.module.reference is None  # no second copy: the reference is the adapter switched off
    reference = load_file(str(run_dir / REFERENCE_DIR / "model.safetensors"))  # the merged SFT weights
    state = model.state_dict()
    for key, tensor in reference.items():
        lora_key = key.replace(".weight", ".base_layer.weight")
        assert torch.equal(state[lora_key if lora_key in state else key], tensor), key  # bit-identical
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)  # the policy moved
    _, _, sft = load_run(tiny_sft_run[1])
    idx = torch.randint(0, 300, (2, 24))
    model.eval()
    with torch.no_grad(), adapters_disabled(model):
        torch.testing.assert_close(model(idx)[0], sft(idx)[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(model(idx)[0], sft(idx)[0])


def test_lora_run_dir_is_loadable_and_logs_trl_metrics(lora_dpo, capsys):
    run_dir, spy = lora_dpo
    assert (run_dir / "adapter" / "adapter_config.json").is_file() and not (run_dir / "model.safetensors").exists()
    assert read_run_config(run_dir).finetune.base == str(run_dir / REFERENCE_DIR)
    _, _, loaded = load_run(run_dir)
    idx = torch.randint(0, 300, (2, 24))
    spy.module.model.eval()
    torch.testing.assert_close(loaded(idx)[0], spy.module.model(idx)[0], atol=1e-5, rtol=1e-5)
    generate_main(["--run", str(run_dir / REFERENCE_DIR), "--adapter", str(run_dir / "adapter"),
                   "--max_new_tokens", "4"])
    assert capsys.readouterr().out.startswith("Once upon a time")
    rows = read_metrics(run_dir)
    for name in METRICS:
        assert any(f"train/{name}" in r for r in rows) and any(f"val/{name}" in r for r in rows), name
    first = next(r for r in rows if "train/loss" in r)
    assert first["train/loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference at step 0
    assert first["train/rewards/margins"] == pytest.approx(0.0, abs=1e-5)


def test_full_method_keeps_a_frozen_reference_copy(tiny_corpus, tiny_sft_run, tmp_path):
    spy = Spy()
    pairs = save_pairs([{"prompt": "Words: ball\nStory:\n", "chosen": "Tom had a ball.", "rejected": "Sue ran."}] * 8,
                       tmp_path / "pairs.jsonl")
    values = dpo_values(tiny_corpus, tiny_sft_run[1], tmp_path, "full", **{"align.pairs": str(pairs)})
    run_dir = train_dpo(align_config(None, values), [spy])
    module = spy.module
    assert spy.ids == {id(p) for p in module.model.parameters()}
    assert all(not p.requires_grad for p in module.reference.parameters())
    sft = merge_lora(load_run(tiny_sft_run[1])[2])  # merged SFT weights: what the reference must still be
    ref_state = module.reference.state_dict()
    assert all(torch.equal(ref_state[k], v) for k, v in sft.state_dict().items())
    tuned = load_file(str(run_dir / "model.safetensors"))
    assert any(not torch.equal(tuned[k], v) for k, v in sft.state_dict().items() if k in tuned)
    assert not (run_dir / REFERENCE_DIR).exists()


def test_simpo_trains_without_a_reference_model(tiny_corpus, tiny_sft_run, tmp_path, monkeypatch):
    from align.policy import PolicyModel

    def no_reference(self):
        raise AssertionError("simpo must not run the reference model")

    monkeypatch.setattr(PolicyModel, "reference_model", no_reference)
    spy = Spy()
    values = dpo_values(tiny_corpus, tiny_sft_run[1], tmp_path, "full",
                        **{"align.loss_type": "simpo", "align.beta": 2.0, "align.simpo.gamma": 0.5})
    run_dir = train_dpo(align_config(None, values), [spy])
    assert spy.module.reference is None  # full fine-tuning, yet no frozen copy: the loss needs none
    rows = [r for r in read_metrics(run_dir) if r.get("train/loss")]
    assert rows and all(math.isfinite(float(r["train/loss"])) for r in rows)
    assert (run_dir / "model.safetensors").is_file()


def test_loss_type_is_checked_against_the_registry(tiny_sft_run):
    from train.config import ConfigError

    with pytest.raises(ConfigError, match="align.loss_type.*simpo"):
        align_config(None, {"finetune": {"base": str(tiny_sft_run[1])}, "align": {"loss_type": "no-such-loss"}})


def test_pair_batches_put_chosen_then_rejected(tiny_sft_run):
    _, tokenizer, _ = load_run(tiny_sft_run[1])
    pairs = [{"prompt": "Words: cat\nStory:\n", "chosen": f"A cat {i}.", "rejected": "No."} for i in range(4)]
    same = {"prompt": "Words: cat\nStory:\n", "chosen": "Same.", "rejected": "Same."}  # no preference: dropped
    dm = PairDataModule(tokenizer, {"train": pairs + [same], "validation": pairs[:2]}, 32, batch_size=2,
                        grad_accum=1, max_steps=2, seed=0, val_batches=1)
    assert len(dm.train_set) == 4
    inputs, targets = next(iter(dm.val_dataloader()))
    assert inputs.shape[0] == 4 and (targets[:2] != -100).sum() > (targets[2:] != -100).sum()
    prompt_len = len(tokenizer.encode(pairs[0]["prompt"]).ids)
    assert (targets[:, : prompt_len - 1] == -100).all()


def test_command_errors_exit_2(tiny_corpus, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [f"--data.path={tiny_corpus}", f"--finetune.base={tmp_path}"], load=align_config)
    assert exit_info.value.code == 2 and "finetune.base" in capsys.readouterr().err


def test_a_refused_start_writes_no_run_folder(tiny_corpus, tiny_sft_run, tmp_path):
    """The merged reference is written only after the run's inputs are checked: a refused resume leaves nothing."""
    missing = tmp_path / "elsewhere" / "step=1.ckpt"
    cfg = align_config(None, dpo_values(tiny_corpus, tiny_sft_run[1], tmp_path, **{"train.resume": str(missing)}))
    with pytest.raises(Exception, match="not found"):
        train_dpo(cfg)
    assert not (tmp_path / "dpo-lora").exists()
