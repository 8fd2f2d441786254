from functools import partial

import pytest
import yaml

from align.rewards import (
    REWARDS,
    GroupReward,
    combined_reward,
    dialogue,
    finished,
    group_rewards,
    length,
    length_penalty,
    repetition,
    reward_params,
    reward_terms,
    word_inclusion,
)
from data.instruct import format_header, parse_header

INFO = parse_header(format_header(["ball", "dance", "happy"], ["Dialogue"], "Tom ran."))


def test_rewards_in_unit_interval():
    texts = ["", "a", 'Tom said, "Hi." ' * 200, "The ball danced happily"]
    for name, fn in REWARDS.items():
        values = fn(INFO, texts, [1.0, 0.0, 0.5, 0.9]) if isinstance(fn, GroupReward) else [fn(INFO, t) for t in texts]
        assert all(0.0 <= v <= 1.0 for v in values), name


def test_the_reward_registry_refuses_a_broken_reward():
    with pytest.raises(TypeError, match="need defaults"):
        REWARDS["strict"] = lambda prompt_info, completion, n: 1.0
    with pytest.raises(TypeError, match=r"not a float in \[0, 1\]"):
        REWARDS["unbounded"] = lambda prompt_info, completion: 2.0
    with pytest.raises(TypeError, match="must take"):
        REWARDS["one_argument"] = lambda completion: 1.0
    assert not {"strict", "unbounded", "one_argument"} & set(REWARDS)


def test_word_inclusion():
    assert word_inclusion(INFO, "The BALL was happy.") == pytest.approx(2 / 3)
    assert word_inclusion(INFO, "Balls and dancing made him happy.") == 1.0  # plural, e-drop + ing
    assert word_inclusion(INFO, "Balls and dancing made him happy.", inflections=False) == pytest.approx(1 / 3)
    assert word_inclusion(INFO, "A balloon, a dancer, unhappy.") == 0.0  # whole words only
    assert word_inclusion({"words": []}, "anything") == 1.0
    assert word_inclusion({"words": ["carry"]}, "She carried it.") == 1.0


def test_dialogue():
    assert dialogue(INFO, 'Tom said, "Hi!"') == 1.0
    assert dialogue(INFO, "Tom said, “Hi!”") == 1.0
    assert dialogue(INFO, "Tom said hi.") == 0.0
    assert dialogue({"features": []}, "Tom said hi.") == 1.0


def test_length_band_and_falloff():
    text = lambda n: " ".join(["word"] * n)
    assert length(INFO, text(10), min_words=10, max_words=20) == 1.0
    assert length(INFO, text(20), min_words=10, max_words=20) == 1.0
    assert length(INFO, text(5), min_words=10, max_words=20) == 0.5
    assert length(INFO, text(30), min_words=10, max_words=20) == 0.5
    assert length(INFO, text(50), min_words=10, max_words=20) == 0.0
    with pytest.raises(ValueError, match="min_words"):
        length(INFO, "x", min_words=20, max_words=10)


def test_repetition():
    assert repetition(INFO, "the cat sat on the mat") == 1.0
    # 6 words -> 4 trigrams: (a b c) (b c a) (c a b) (a b c): 3 distinct of 4
    assert repetition(INFO, "a b c a b c") == 0.75
    assert repetition(INFO, "A B c a b C", n=2) == pytest.approx(3 / 5)
    assert repetition(INFO, "too short") == 1.0


def test_finished():
    assert finished(INFO, "They played all day.") == 1.0
    assert finished(INFO, 'Tom said, "Bye!"  \n') == 1.0
    assert finished(INFO, "Tom said, “Bye?”") == 1.0
    assert finished(INFO, "They played all") == 0.0
    assert finished(INFO, "") == 0.0


def test_combined_reward_weighted_mean():
    text = 'Tom kicked the ball. "Yay!" he said.'
    total, per = combined_reward(INFO, text, {"word_inclusion": 1.0, "dialogue": 1.0, "finished": 2.0})
    assert per == {"word_inclusion": pytest.approx(1 / 3), "dialogue": 1.0, "finished": 1.0}
    assert total == pytest.approx((1 / 3 + 1.0 + 2.0) / 4)


def test_combined_reward_custom_registry_and_errors():
    rewards = {**REWARDS, "length": partial(length, min_words=1, max_words=3)}
    total, per = combined_reward(INFO, "one two", {"length": 1.0}, rewards=rewards)
    assert total == 1.0 and per == {"length": 1.0}
    with pytest.raises(ValueError, match="valid.*word_inclusion"):
        combined_reward(INFO, "x", {"nonsense": 1.0})
    with pytest.raises(ValueError, match="weights"):
        combined_reward(INFO, "x", {"length": 0.0})


def test_reward_parameters_from_yaml():
    spec = yaml.safe_load("{length: {weight: 2, min_words: 1, max_words: 3}, repetition: {n: 2}, finished: 1}")
    terms = reward_terms(spec)
    assert {name: w for name, (w, _) in terms.items()} == {"length": 2.0, "repetition": 1.0, "finished": 1.0}
    total, per = combined_reward(INFO, "a b a b.", spec)  # 4 words, above max_words=3: 1 - (4 - 3) / 3
    assert per == {"length": pytest.approx(2 / 3), "repetition": pytest.approx(2 / 3), "finished": 1.0}
    assert total == pytest.approx((2 * 2 / 3 + 2 / 3 + 1.0) / 4)
    assert reward_params(length) == {"min_words": 80, "max_words": 300} and reward_params(finished) == {}
    assert combined_reward(INFO, "x", {"length": {"min_words": 1}})[1] == {"length": 1.0}  # weight defaults to 1


@pytest.mark.parametrize("spec, message", [
    ({"nonsense": 1.0}, r"unknown reward\(s\) \['nonsense'\]; valid: .*word_inclusion"),
    ({"length": -1}, "length: the weight must be a number >= 0"),
    ({"length": {"weight": -0.5}}, "length: the weight must be a number >= 0"),
    ({"length": {"target": 50}}, r"length: unknown parameter\(s\) \['target'\]; valid: \['weight', 'min_words'"),
    ({"repetition": {"n": "two"}}, "repetition.n: expected int like 3"),
    ({"word_inclusion": {"inflections": 1}}, "word_inclusion.inflections: expected bool"),
    ({"length": {"min_words": 50, "max_words": 10}}, "min_words <= max_words"),
    ({"repetition": {"n": 0}}, "n >= 1"),
])
def test_bad_reward_specs_name_the_problem(spec, message):
    with pytest.raises(ValueError, match=message):
        reward_terms(spec)


@pytest.mark.parametrize("weights", ["{word_inclusion:1.0}", "{length: -1}", "{length: high}", "[1, 2]",
                                     "{length: {target: 3}}", "{repetition: {weight: -1, n: 2}}"])
def test_bad_reward_weights_stop_at_config_time(tiny_sft_run, weights):
    from align.policy import align_config
    from train.config import ConfigError

    with pytest.raises(ConfigError, match="align.rewards"):
        align_config(None, {"finetune": {"base": str(tiny_sft_run[1])}, "align": {"rewards": yaml.safe_load(weights)}})


# ------------------------------------------------------------------------------------------- Kimi k1.5 length penalty


def test_length_penalty_by_hand():
    # lengths 2, 4, 6 words: lambda = 0.5, 0, -0.5 (Kimi k1.5 §2.3.3); + 1/2 to stay in [0, 1]
    group = ["a b", "a b c d", "a b c d e f"]
    assert length_penalty({}, group, [1.0, 1.0, 1.0]) == [1.0, 0.5, 0.0]  # correct: lambda
    assert length_penalty({}, group, [0.0, 0.0, 0.0]) == [0.5, 0.5, 0.0]  # incorrect: min(0, lambda)
    assert length_penalty({}, group, [0.7, 0.8, 0.8], threshold=0.75) == [0.5, 0.5, 0.0]
    assert length_penalty({}, ["a b", "c d"], [1.0, 0.0]) == [0.5, 0.5]  # equal lengths: no penalty
    with pytest.raises(ValueError, match="threshold"):
        length_penalty({}, group, [1.0] * 3, threshold=1.5)


def test_length_penalty_sees_the_group_and_the_other_rewards():
    info = {"words": ["cat"]}
    group = ["the cat sat", "a dog ran far away now", "cat"]  # 3, 6, 1 words; word_inclusion 1, 0, 1
    scored = group_rewards(info, group, {"word_inclusion": 1.0, "length_penalty": {"weight": 0.5}})
    lam = [0.5 - (n - 1) / 5 for n in (3, 6, 1)]  # 0.1, -0.5, 0.5
    penalty = [0.5 + lam[0], 0.5 + min(0.0, lam[1]), 0.5 + lam[2]]
    for (total, per), inclusion, p in zip(scored, [1.0, 0.0, 1.0], penalty):
        assert per == pytest.approx({"word_inclusion": inclusion, "length_penalty": p})
        assert total == pytest.approx((inclusion + 0.5 * p) / 1.5)
    assert combined_reward(info, "cat", {"length_penalty": 1.0}) == (0.5, {"length_penalty": 0.5})  # group of one


def test_a_broken_group_reward_is_refused():
    with pytest.raises(TypeError, match="not a float in"):
        REWARDS["long"] = GroupReward(lambda prompt_info, completions, others: [2.0] * len(completions))
    with pytest.raises(TypeError, match="must take"):
        REWARDS["short"] = GroupReward(lambda prompt_info, completions: [1.0] * len(completions))
    assert not {"long", "short"} & set(REWARDS)
    assert reward_terms({"length_penalty": {"threshold": 0.5}})["length_penalty"][1]({}, ["a", "a b"], [0.6, 0.4]) \
        == [1.0, 0.0]
    with pytest.raises(ValueError, match="threshold"):
        reward_terms({"length_penalty": {"threshold": 2.0}})
