"""lm-evaluation-harness on this stack's own models (train/evals/lm_eval_model.py, train/evals/evaluate.py) and the
offline `tinystories_next` task (train/evals/tasks/), for a softmax and a Mamba run directory (and a hybrid).

Every number is checked against a computation that does not go through the wrapper: loglikelihood against one
direct forward pass, loglikelihood_rolling against lm_eval's own window function with a forward pass per window,
generate_until against train.generate's greedy sampling, and the task's acc against an argmax over direct scores.
"""

from __future__ import annotations

import importlib.util
import json
import random
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("lm_eval")

from conftest import make_story  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window  # noqa: E402

from data.sources import SAMPLE, resolve_path  # noqa: E402
from data.tokenizer import eot_id, train_tokenizer  # noqa: E402
from data.tokens import content_hash  # noqa: E402
from model.config import ModelConfig  # noqa: E402
from model.mixers.mamba import MambaConfig  # noqa: E402
from model.transformer import Transformer  # noqa: E402
from train.config import Config, load_config, save_config  # noqa: E402
from train.evals.evaluate import TASKS_DIR, main  # noqa: E402
from train.evals.lm_eval_model import TinystackLM, score_windows  # noqa: E402
from train.generate.sampling import sample_stories  # noqa: E402
from train.rundir.weights import save_weights  # noqa: E402

L = 32  # max_seq_len of the tiny runs: the texts below are longer
MIXERS = {"softmax": "softmax", "mamba": "mamba", "hybrid": ["mamba", "softmax"]}


STORIES = [make_story(random.Random(3 + i), i % 3) for i in range(120)]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(STORIES, vocab_size=600)


def fit(model: Transformer, tokenizer, steps: int = 80) -> None:
    """A second of training on the synthetic stories: the model then writes story-like text (varied tokens that
    decode to words), so greedy continuations, stop strings and choices are not degenerate."""
    eot = eot_id(tokenizer)
    stream = torch.tensor([t for s in STORIES for t in tokenizer.encode(s).ids + [eot]])
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(stream) - L - 1, (16,), generator=gen)
        batch = torch.stack([stream[i:i + L + 1] for i in starts.tolist()])
        logits, _ = model(batch[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def make_run(root: Path, tokenizer, mixer) -> Path:
    cfg = Config()
    cfg.model = ModelConfig(vocab_size=tokenizer.get_vocab_size(), d_model=32, n_layers=2, n_heads=4, max_seq_len=L,
                            mixer=mixer, mamba=MambaConfig(d_state=4, chunk_size=8))
    root.mkdir(parents=True)
    save_config(cfg, root / "config.yaml")
    tokenizer.save(str(root / "tokenizer.json"))
    torch.manual_seed(0)
    model = Transformer(cfg.model)
    fit(model, tokenizer)
    save_weights(model, root / "model.safetensors", tokenizer_hash=content_hash(tokenizer.to_str()))
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tokenizer) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lm_eval_runs")
    return {name: make_run(root / name, tokenizer, mixer) for name, mixer in MIXERS.items()}


def request(kind: str, *args) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def forward_logp(model, ids: list[int]) -> torch.Tensor:
    """log p(. | ids[:t+1]) for every t, one forward pass: (len(ids), V)."""
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids]))
    return F.log_softmax(logits[0].float(), dim=-1)


def story_text(seed: int, extra: int = 3) -> str:
    return make_story(random.Random(seed), extra)


# ------------------------------------------------------------------ loglikelihood
def direct_loglikelihood(model, tokenizer, context: str, continuation: str) -> tuple[float, bool]:
    """Reference: context + continuation through the model once (the last L + 1 tokens); a continuation longer
    than L in lm_eval's rolling windows after the context's last token."""
    if context:
        ctx = tokenizer.encode(context).ids
        whole = tokenizer.encode(context + continuation).ids
        # a split inside a word can merge across it: then the continuation is encoded on its own
        cont = whole[len(ctx):] if whole[:len(ctx)] == ctx else tokenizer.encode(continuation).ids
    else:
        ctx, cont = [eot_id(tokenizer)], tokenizer.encode(continuation).ids
    if len(cont) > L:
        windows = [make_disjoint_window(w) for w in get_rolling_token_windows(cont, ctx[-1], L, 1)]
    else:
        ids = (ctx + cont)[-(L + 1):]
        windows = [(ids[:-len(cont)], cont)]
    total, greedy = 0.0, True
    for context_ids, pred in windows:
        logp = forward_logp(model, (context_ids + pred)[:-1])[-len(pred):]
        target = torch.tensor(pred)
        total += logp.gather(-1, target[:, None]).sum().item()
        greedy = greedy and bool((logp.argmax(-1) == target).all())
    return total, greedy


@pytest.mark.parametrize("mixer", list(MIXERS))
def test_loglikelihood_equals_a_direct_forward_pass(runs, mixer):
    lm = TinystackLM(run=runs[mixer], batch_size=3, device="cpu")
    story = story_text(1)
    long_context = " ".join(story_text(s) for s in range(2, 5))  # far longer than L tokens: cut from the left
    assert len(lm.encode(long_context)) > 3 * L
    pairs = [("Once upon a time, there was", " a little girl named Lily."),
             ("Once upon a time,", " there was a big dog."),
             ("", "Once upon a time"),  # empty context: conditioned on <|endoftext|>
             (story[:40], story[40:60]),  # cut inside a word
             (long_context, " The end."),
             ("Tom had a big ball.", " Tom was happy."),
             ("Once upon a time,", " " + long_context)]  # a continuation longer than the window
    assert len(lm.encode(pairs[-1][1])) > 2 * L
    # a continuation the model itself would generate: is_greedy must be True
    prompt = "One day, Sue said,"
    ids = torch.tensor([lm.encode(prompt)])
    greedy = lm.model.generate(ids, 5, temperature=0)[0, ids.shape[1]:].tolist()
    assert lm.encode(prompt + lm.decode(greedy)) == ids[0].tolist() + greedy  # the text gives back those tokens
    pairs.append((prompt, lm.decode(greedy)))
    got = lm.loglikelihood([request("loglikelihood", c, x) for c, x in pairs])
    want = [direct_loglikelihood(lm.model, lm.tokenizer, c, x) for c, x in pairs]
    for (c, x), (value, is_greedy), (ref, ref_greedy) in zip(pairs, got, want):
        assert value == pytest.approx(ref, abs=1e-4), (c, x)
        assert is_greedy == ref_greedy, (c, x)
    assert got[-1][1] is True
    assert not all(g for _, g in got)  # some continuation is not the model's argmax
    # one request at a time gives the same numbers as batches (right padding never leaks into real positions)
    single = TinystackLM(model=lm.model, tokenizer=lm.tokenizer, batch_size=1)
    one = single.loglikelihood([request("loglikelihood", c, x) for c, x in pairs])
    assert [v for v, _ in one] == pytest.approx([v for v, _ in got], abs=1e-4)


def test_trailing_space_of_the_context_moves_to_the_continuation(runs):
    lm = TinystackLM(run=runs["softmax"])
    a, b = lm.loglikelihood([request("loglikelihood", "Tom had a", " big ball."),
                             request("loglikelihood", "Tom had a ", "big ball.")])
    assert a[0] == pytest.approx(b[0], abs=1e-5)


# ------------------------------------------------------------------ loglikelihood_rolling
def direct_rolling(model, tokenizer, text: str, overlap: int) -> float:
    """Reference: lm_eval's own windows (context_len = overlap + 1), one forward pass per window."""
    ids = tokenizer.encode(text).ids
    windows = list(map(make_disjoint_window, get_rolling_token_windows(
        token_list=ids, prefix_token=eot_id(tokenizer), max_seq_len=L, context_len=overlap + 1)))
    assert sum(len(pred) for _, pred in windows) == len(ids)  # every token scored once
    total = 0.0
    for context, pred in windows:
        window = context + pred[:-1]
        assert len(window) <= L
        logp = forward_logp(model, window)[-len(pred):]
        total += logp.gather(-1, torch.tensor(pred)[:, None]).sum().item()
    return total


@pytest.mark.parametrize("mixer,overlap", [("softmax", 0), ("softmax", 12), ("mamba", 0), ("mamba", 20),
                                           ("hybrid", 5)])
def test_loglikelihood_rolling_equals_a_direct_sum_over_windows(runs, mixer, overlap):
    lm = TinystackLM(run=runs[mixer], batch_size=4, rolling_overlap=overlap)
    texts = [" ".join(story_text(s) for s in range(5, 8)), story_text(9), "Tom."]
    assert len(lm.encode(texts[0])) > 4 * L and len(lm.encode(texts[2])) < L
    got = lm.loglikelihood_rolling([request("loglikelihood_rolling", t) for t in texts])
    want = [direct_rolling(lm.model, lm.tokenizer, t, overlap) for t in texts]
    assert got == pytest.approx(want, abs=1e-3)
    # a text within one window is one forward pass over <|endoftext|> + text
    ids = [eot_id(lm.tokenizer)] + lm.encode(texts[2])
    logp = forward_logp(lm.model, ids[:-1])
    assert got[2] == pytest.approx(logp.gather(-1, torch.tensor(ids[1:])[:, None]).sum().item(), abs=1e-5)


def test_rolling_overlap_changes_the_context_not_the_tokens_scored(runs):
    text = " ".join(story_text(s) for s in range(5, 8))
    values = [TinystackLM(run=runs["softmax"], rolling_overlap=o).loglikelihood_rolling(
        [request("loglikelihood_rolling", text)])[0] for o in (0, 16)]
    assert values[0] != pytest.approx(values[1], abs=1e-3)


def test_score_windows_cover_each_target_once_within_the_window():
    for n, start, window, overlap in [(200, 1, 32, 0), (200, 1, 32, 31), (33, 1, 32, 0), (90, 70, 16, 4), (5, 4, 8, 2)]:
        spans = score_windows(n, start, window, overlap)
        targets = [t for _, first, end in spans for t in range(first, end)]
        assert targets == list(range(start, n))
        for lo, first, end in spans:
            assert end - 1 - lo <= window and lo <= first - 1
            assert end - 1 - lo == min(window, end - 1)  # the input is as long as the window allows


# ------------------------------------------------------------------ generate_until
@pytest.mark.parametrize("mixer", list(MIXERS))
def test_generate_until_equals_train_generate_greedy(runs, mixer):
    lm = TinystackLM(run=runs[mixer], batch_size=4)
    prompts = ["Once upon a time", "Tom had a big", "Lily", "One day, Sue said,", "Once upon a time", ""]
    n = 10
    got = lm.generate_until([request("generate_until", p, {"until": ["<|endoftext|>"], "max_gen_toks": n})
                             for p in prompts])
    for prompt, text in zip(prompts[:-1], got):
        want = sample_stories(lm.model, lm.tokenizer, prompt, max_new_tokens=n, temperature=0)[0]
        assert prompt + text == want
    assert got[0] == got[4]
    assert any(len(lm.encode(text)) == n for text in got)  # max_gen_toks is what bounds them (no early EOT)
    # an empty context starts from <|endoftext|>
    eot = eot_id(lm.tokenizer)
    out = lm.model.generate(torch.tensor([[eot]]), n, temperature=0, eos_id=eot)[0, 1:].tolist()
    assert got[-1] == lm.decode([t for t in out if t != eot])


@pytest.mark.parametrize("mixer", ["softmax", "mamba"])
def test_generate_until_stops_at_stop_strings_and_max_gen_toks(runs, mixer):
    lm = TinystackLM(run=runs[mixer])
    prompt = "Once upon a time"
    full = lm.generate_until([request("generate_until", prompt, {"until": [], "max_gen_toks": 16})])[0]
    assert len(full) > 8
    stop = full[5:8]
    cut_at = full.find(stop)
    texts = lm.generate_until([request("generate_until", prompt, {"until": [stop], "max_gen_toks": 16}),
                               request("generate_until", prompt, {"until": "\u2603", "max_gen_toks": 16}),
                               request("generate_until", prompt, {"until": ["zzz", stop], "max_gen_toks": 3}),
                               request("generate_until", prompt, {"until": [full[-2:], stop], "max_gen_toks": 16})])
    assert texts[0] == full[:cut_at] and stop not in texts[0]
    assert texts[1] == full  # a stop string that never appears
    short = sample_stories(lm.model, lm.tokenizer, prompt, max_new_tokens=3, temperature=0)[0][len(prompt):]
    want_short = short[:short.find(stop)] if stop in short else short
    assert texts[2] == want_short and len(lm.encode(texts[2])) <= 3
    assert texts[3] == full[:min(cut_at, full.find(full[-2:]))]  # the earliest of several stop strings
    # decoding stops once the stop string is out: the prefill plus one step per token up to it, not 16
    calls = []
    hook = lm.model.register_forward_hook(lambda *_: calls.append(1))
    lm.generate_until([request("generate_until", prompt, {"until": [stop], "max_gen_toks": 16})])
    hook.remove()
    assert len(calls) <= len(lm.encode(full[:cut_at + len(stop)])) + 1 < 16


def test_long_prompts_are_cut_to_leave_room_for_generation(runs):
    lm = TinystackLM(run=runs["softmax"])
    long = " ".join(story_text(s) for s in range(3))
    ids = lm.prompt_tokens(long, max_gen_toks=10)
    assert ids == lm.encode(long)[-(L - 10):]
    assert len(lm.prompt_tokens(long, max_gen_toks=1000)) == L // 2


# ------------------------------------------------------------------ the offline task
def task_utils():
    spec = importlib.util.spec_from_file_location("tinystories_next_utils", TASKS_DIR / "tinystories_next/utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_task_docs_are_seeded_held_out_and_well_formed(tiny_corpus):
    utils = task_utils()
    stories = utils.held_out_stories(str(tiny_corpus))
    assert stories == [s.strip() for s in (tiny_corpus / "valid.txt").read_text().split("<|endoftext|>")
                       if s.strip()]  # the validation file only
    docs = utils.build_docs(stories, num_docs=25, seed=7)
    assert len(docs) == 25 and docs == utils.build_docs(stories, num_docs=25, seed=7)
    assert docs != utils.build_docs(stories, num_docs=25, seed=8)
    for doc in docs:
        sents = utils.sentences(stories[doc["story"]])
        answer = doc["choices"][doc["label"]]
        assert answer in sents and sents.index(answer) >= 2  # at least two sentences of context
        assert " ".join(sents[:sents.index(answer)]) == doc["context"]
        assert len(set(doc["choices"])) == 4
        for i, choice in enumerate(doc["choices"]):
            if i != doc["label"]:
                assert choice not in sents  # distractors come from other stories, never repeat this one's
    assert len({d["label"] for d in docs}) > 1
    assert len(utils.build_docs(stories, num_docs=1000)) <= len(stories)


def test_task_on_the_real_tinystories_copy(tinystories_dir):
    utils = task_utils()
    docs = utils.load_docs(data_dir=str(tinystories_dir), version=1.0)["test"]
    assert len(docs) == 500
    again = utils.load_docs(data_dir=str(tinystories_dir))["test"]
    assert docs[:5] == again[:5]
    assert all(len(c) == 4 and 0 <= lab < 4 for c, lab in zip(docs["choices"], docs["label"]))


def direct_accuracy(model, tokenizer, docs: list[dict]) -> tuple[float, float]:
    """acc and acc_norm (log-likelihood per byte of the choice) from direct forward passes."""
    acc = norm = 0
    for doc in docs:
        scores = [direct_loglikelihood(model, tokenizer, doc["context"], " " + c)[0] for c in doc["choices"]]
        per_byte = [s / len((" " + c).encode()) for s, c in zip(scores, doc["choices"])]
        acc += max(range(len(scores)), key=scores.__getitem__) == doc["label"]
        norm += max(range(len(scores)), key=per_byte.__getitem__) == doc["label"]
    return acc / len(docs), norm / len(docs)


@pytest.mark.parametrize("mixer", ["softmax", "mamba"])
def test_offline_task_through_simple_evaluate(runs, mixer, tiny_corpus):
    import lm_eval

    lm = TinystackLM(run=runs[mixer], batch_size=8)
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata={"data_dir": str(tiny_corpus)})
    results = lm_eval.simple_evaluate(model=lm, tasks=["tinystories_next"], task_manager=manager, limit=20,
                                      log_samples=False, bootstrap_iters=0)
    metrics = results["results"]["tinystories_next"]
    assert 0.0 <= metrics["acc,none"] <= 1.0 and 0.0 <= metrics["acc_norm,none"] <= 1.0
    assert results["n-samples"]["tinystories_next"]["effective"] == 20
    docs = task_utils().build_docs(task_utils().held_out_stories(str(tiny_corpus)))[:20]
    acc, acc_norm = direct_accuracy(lm.model, lm.tokenizer, docs)
    assert metrics["acc,none"] == pytest.approx(acc) and metrics["acc_norm,none"] == pytest.approx(acc_norm)


# ------------------------------------------------------------------ the CLI
def test_cli_writes_json_and_prints_a_table(runs, tiny_corpus, capsys):
    main(["--run", str(runs["hybrid"]), "--tasks", "tinystories_next", "--limit", "6", "--batch-size", "4",
          "--data-dir", str(tiny_corpus)])
    out = capsys.readouterr().out
    assert "|tinystories_next|" in out and "acc_norm" in out
    saved = json.loads((runs["hybrid"] / "lm_eval_tinystories_next.json").read_text())
    assert 0.0 <= saved["results"]["tinystories_next"]["acc,none"] <= 1.0
    assert saved["config"]["model_args"]["run"] == str(runs["hybrid"]) and saved["config"]["limit"] == 6


def test_cli_out_file(runs, tiny_corpus, tmp_path, capsys):
    out = tmp_path / "sub" / "r.json"
    main(["--run", str(runs["softmax"]), "--tasks", "tinystories_next", "--limit", "3", "--out", str(out),
          "--data-dir", str(tiny_corpus)])
    assert json.loads(out.read_text())["results"]["tinystories_next"]["alias"] == "tinystories_next"


def exits_2(argv, capsys, match: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert match in err, err


def test_cli_bad_run_dir_exits_2(tmp_path, capsys):
    exits_2(["--run", str(tmp_path / "nothing"), "--tasks", "tinystories_next"], capsys, "not a run directory")


def test_cli_unknown_task_exits_2(runs, capsys):
    exits_2(["--run", str(runs["softmax"]), "--tasks", "tinystories_next,no_such_task_xyz"], capsys,
            "unknown task 'no_such_task_xyz'")


@pytest.mark.parametrize("extra,match", [(["--out", "r.txt"], ".json file"), (["--limit", "0"], "--limit"),
                                         (["--tasks", " , "], "--tasks is empty"),
                                         (["--data-dir", "/no/such/dir"], "--data-dir")])
def test_cli_bad_options_exit_2(runs, capsys, extra, match):
    argv = ["--run", str(runs["softmax"]), "--tasks", "tinystories_next"]
    exits_2(argv + extra, capsys, match)


def test_cli_out_directory_exits_2(runs, tmp_path, capsys):
    (tmp_path / "d.json").mkdir()
    exits_2(["--run", str(runs["softmax"]), "--tasks", "tinystories_next", "--out", str(tmp_path / "d.json")],
            capsys, "is a directory")


def run_on(runs, root: Path, data_path: str) -> Path:
    """A copy of the softmax run whose config.yaml says data.path: data_path."""
    run = root / "run"
    shutil.copytree(runs["softmax"], run)
    cfg = load_config(run / "config.yaml", run_file=True)
    cfg.data.path = data_path
    save_config(cfg, run / "config.yaml")
    return run


def evaluated(run: Path, *extra: str) -> dict:
    """The JSON results of a 3-doc tinystories_next evaluation of run."""
    main(["--run", str(run), "--tasks", "tinystories_next", "--limit", "3", *extra])
    return json.loads((run / "lm_eval_tinystories_next.json").read_text())


def test_cli_reads_the_run_s_data_without_data_dir(runs, tiny_corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TINYSTORIES_DIR", raising=False)
    run = run_on(runs, tmp_path, str(tiny_corpus))
    implicit = evaluated(run)
    assert implicit["config"]["data_dir"] == str(tiny_corpus)
    explicit = evaluated(run, "--data-dir", str(tiny_corpus))
    assert implicit["results"] == explicit["results"]


def test_cli_resolves_the_sample_name_like_training(runs, tiny_corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TINYSTORIES_DIR", raising=False)
    run = run_on(runs, tmp_path, SAMPLE)
    assert evaluated(run)["config"]["data_dir"] == resolve_path(SAMPLE)  # the shipped sample, decompressed
    monkeypatch.setenv("TINYSTORIES_DIR", str(tiny_corpus))
    assert evaluated(run)["config"]["data_dir"] == str(tiny_corpus)


def test_cli_without_the_data_exits_2(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TINYSTORIES_DIR", raising=False)
    run = run_on(runs, tmp_path, str(tmp_path / "gone"))
    exits_2(["--run", str(run), "--tasks", "tinystories_next"], capsys, f"data path not found: {tmp_path / 'gone'}")


def test_cli_without_lm_eval_names_the_extra(runs, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` raises ImportError
    exits_2(["--run", str(runs["softmax"]), "--tasks", "tinystories_next"], capsys, 'pip install -e ".[eval]"')
