"""GRPO end to end on the synthetic corpus: G completions per prompt in one batch, zero-mean group advantages,
num_iterations > 1 reusing samples, reward/KL/clip/entropy logs, a frozen reference, and the reward table."""

from __future__ import annotations

import json
import math

import lightning as L
import pytest
import torch
from conftest import tiny_finetune_values
from safetensors.torch import load_file

from align.evaluate import main as evaluate_main
from align.evaluate import parse_run
from align.grpo import GRPOModel, PromptBatches, length_chunks, main, train_grpo
from align.policy import REFERENCE_DIR, align_config
from model.lora import adapters_disabled, lora_parameters, merge_lora
from train.cli import run_cli
from train.report import moving_average, read_metrics
from train.rundir.load import load_run

G, P = 4, 2
LOGGED = ["reward", "reward_std", "rewards/word_inclusion", "kl", "clip_fraction", "completion_length", "entropy",
          "loss"]


class Spy(L.Callback):
    def on_train_start(self, trainer, pl_module):
        self.module, self.rollouts = pl_module, []
        rollout = pl_module.rollout

        def recording(*args):
            self.rollouts.append(rollout(*args))
            return self.rollouts[-1]

        pl_module.rollout = recording
        self.ids = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}


def grpo_values(corpus, sft_run, out, **extra):
    values = tiny_finetune_values(corpus, out, sft_run, {},
                                  **{"train.name": "grpo", "train.max_steps": 4, "train.warmup_steps": 1, **extra})
    values["align"] = {"group_size": G, "prompts_per_step": P, "num_iterations": 2, "max_new_tokens": 10,
                       "beta": 0.05, "rewards": {"word_inclusion": 2.0, "length": 1.0, "repetition": 0.5}}
    return values


@pytest.fixture(scope="module")
def grpo_run(tiny_corpus, tiny_sft_run, tmp_path_factory):
    spy = Spy()
    cfg = align_config(None, grpo_values(tiny_corpus, tiny_sft_run[1], tmp_path_factory.mktemp("grpo")))
    return train_grpo(cfg, [spy]), spy


def test_group_of_completions_per_prompt_with_zero_mean_advantages(grpo_run):
    _, spy = grpo_run
    rollout = spy.rollouts[0]
    assert rollout.inputs.shape[0] == P * G and rollout.mask.shape == rollout.labels.shape
    assert torch.allclose(rollout.advantages.view(P, G).mean(-1).cpu(), torch.zeros(P), atol=1e-5)
    for group, mask in zip(rollout.inputs.view(P, G, -1), rollout.mask.view(P, G, -1)):
        start = int(mask[0].nonzero()[0]) + 1  # the first completion token
        assert (group[:, :start] == group[0, :start]).all()  # G copies of the same prompt
    assert ((rollout.mask.sum(-1) >= 1) & (rollout.mask.sum(-1) <= 10)).all()  # 1..max_new_tokens tokens
    assert rollout.old_logp is not None and rollout.ref_logp is not None
    # pi_old is recorded while sampling; at the first rollout the new adapter is zero (B = 0), so it is pi_ref's
    # training forward on the same tokens: any shift between sampled and scored positions would show here
    on = rollout.mask.bool()
    assert torch.allclose(rollout.old_logp[on], rollout.ref_logp[on], atol=1e-5)
    assert (rollout.old_logp[on] < 0).all()


def test_num_iterations_reuses_samples_and_logs_reward_stats(grpo_run):
    run_dir, spy = grpo_run
    assert len(spy.rollouts) == 2  # 4 steps, each batch of samples serves 2
    rows = read_metrics(run_dir)
    for name in LOGGED:
        values = [r[f"train/{name}"] for r in rows if f"train/{name}" in r]
        assert len(values) == 4 and all(v == v for v in values), name  # every step, finite
    kl = [r["train/kl"] for r in rows if "train/kl" in r]
    assert kl[0] == pytest.approx(0.0, abs=1e-6)  # the policy starts as the reference
    assert all((run_dir / name).stat().st_size > 0 for name in ("loss.png", "reward.png", "kl.png"))


def test_moving_average_hand_values():
    assert moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert moving_average([2.0, 4.0], 1) == [2.0, 4.0]


def test_policy_trains_and_reference_stays_the_sft_model(grpo_run, tiny_sft_run):
    run_dir, spy = grpo_run
    model = spy.module.model
    assert spy.ids == {id(p) for p in lora_parameters(model)}
    reference = load_file(str(run_dir / REFERENCE_DIR / "model.safetensors"))
    state = model.state_dict()
    for key, tensor in reference.items():
        lora_key = key.replace(".weight", ".base_layer.weight")
        assert torch.equal(state[lora_key if lora_key in state else key], tensor), key
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)
    _, _, sft = load_run(tiny_sft_run[1])
    idx = torch.randint(0, 300, (2, 24))
    model.eval()
    with torch.no_grad(), adapters_disabled(model):
        torch.testing.assert_close(model(idx)[0], sft(idx)[0], atol=1e-5, rtol=1e-5)


def test_prompt_chunks_share_a_length_and_batches_repeat_each_draw_and_resume():
    lengths = [i % 5 for i in range(100)] + [7, 7]
    chunks = length_chunks(lengths, 3, seed=0)
    assert len(chunks) == 5 * 6 and all(len({lengths[i] for i in c}) == 1 for c in chunks)  # 7: too few, left out
    assert len({i for c in chunks for i in c}) == 90 and chunks == length_chunks(lengths, 3, seed=0)
    full = list(PromptBatches(chunks, accum=2, iterations=2, seed=0, start_step=0, max_steps=6))
    assert len(full) == 12 and all(len(b) == 3 for b in full)
    assert full[0:2] == full[2:4] and full[0] != full[1] and full[4:6] != full[0:2]  # step 1 reuses step 0's
    assert list(PromptBatches(chunks, 2, 2, 0, start_step=3, max_steps=6)) == full[6:]  # resume at step 3


def test_full_method_and_single_iteration(tiny_corpus, tiny_sft_run, tmp_path):
    spy = Spy()
    values = grpo_values(tiny_corpus, tiny_sft_run[1], tmp_path, **{"train.max_steps": 2})
    values["finetune"]["method"] = "full"
    values["align"].update(num_iterations=1, level="sequence", scale="batch")
    run_dir = train_grpo(align_config(None, values), [spy])
    module = spy.module
    assert isinstance(module, GRPOModel) and len(spy.rollouts) == 2 and spy.rollouts[0].old_logp is None
    assert (run_dir / "model.safetensors").is_file() and spy.ids == {id(p) for p in module.model.parameters()}
    assert all(not p.requires_grad for p in module.reference.parameters())
    sft = merge_lora(load_run(tiny_sft_run[1])[2]).state_dict()
    assert all(torch.equal(v, sft[k]) for k, v in module.reference.state_dict().items())  # frozen copy unchanged
    assert any(not torch.equal(v, sft[k]) for k, v in module.model.state_dict().items())


def test_evaluate_writes_the_reward_table(grpo_run, tiny_sft_run, tmp_path, capsys):
    run_dir, _ = grpo_run
    base, sft = tiny_sft_run
    out = tmp_path / "rewards.md"
    same = f"grpo={run_dir / REFERENCE_DIR},adapter={run_dir / 'adapter'}"  # the LoRA run dir, spelled out
    evaluate_main([f"base={base}", f"sft={sft}", f"grpo={run_dir}", same, "--n", "5", "--max_new_tokens", "6",
                   "--out", str(out)])
    table = capsys.readouterr().out
    assert "| sft | 1 |" in table and "| grpo | 2 |" in table and "±" in table and "word_inclusion (w=1)" in table
    assert out.read_text().count("| base |") == 1
    results = json.loads(out.with_suffix(".json").read_text())["results"]
    assert set(results) == {"base", "sft", "grpo"} and results["base"][0]["prompts"] == 5
    evaluate_main([f"sft={sft}", "--n", "3", "--max_new_tokens", "4", "--temperature", "1", "--samples", "2"])
    assert "| sft | 1 |" in capsys.readouterr().out
    assert parse_run("dpo=runs/x,adapter=a") == ("dpo", "runs/x", "a")
    with pytest.raises(ValueError, match="name=path"):
        parse_run("runs/x")


@pytest.mark.parametrize("extra, message", [({"align.group_size": 1}, "align.group_size"),
                                            ({"align.scale": "nope"}, "align.scale")])
def test_command_errors_exit_2(tiny_corpus, tiny_sft_run, tmp_path, capsys, extra, message):
    args = [f"--data.path={tiny_corpus}", f"--finetune.base={tiny_sft_run[1]}", f"--train.out_dir={tmp_path}",
            "--log.wandb=false"] + [f"--{k}={v}" for k, v in extra.items()]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, args, load=align_config)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("variant", [{"objective": "gspo", "level": "sequence"},
                                     {"objective": "cispo", "baseline": "leave_one_out", "scale": "none"}])
def test_grpo_variants_train_with_kimi_length_penalty(tiny_corpus, tiny_sft_run, tmp_path, variant):
    """GSPO, CISPO and RLOO are options of the one objective; Kimi's length penalty is one more reward term."""
    values = grpo_values(tiny_corpus, tiny_sft_run[1], tmp_path, **{"train.max_steps": 2})
    values["align"].update(variant, rewards={"word_inclusion": 1.0, "length_penalty": {"weight": 0.5}})
    run_dir = train_grpo(align_config(None, values))
    rows = [r for r in read_metrics(run_dir) if r.get("train/loss")]
    assert rows and all(math.isfinite(float(r["train/loss"])) for r in rows)
    assert all(0 <= float(r["train/rewards/length_penalty"]) <= 1 for r in rows)
