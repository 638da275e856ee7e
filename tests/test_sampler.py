"""Sampling filters and stop detection, as specifications."""

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentcore.engine.base import Sampling
from agentcore.engine.decode.sampler import sample
from agentcore.engine.decode.stop import StopChecker, StopString

LOGITS = np.log(np.array([0.5, 0.2, 0.15, 0.1, 0.05], dtype=np.float32))


def draws(logits, sampling, n=2000, seed=0, recent=()):
    rng = np.random.default_rng(seed)
    return np.array([sample(logits, sampling, rng, recent) for _ in range(n)])


def test_greedy_is_argmax():
    logits = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    rng = np.random.default_rng(0)
    assert sample(logits, None, rng) == int(np.argmax(logits))
    assert sample(logits, Sampling(temperature=0.0), rng) == int(np.argmax(logits))


def test_top_k_one_is_greedy():
    logits = np.random.default_rng(1).standard_normal(1000).astype(np.float32)
    got = draws(logits, Sampling(temperature=1.5, top_k=1), n=50)
    assert (got == np.argmax(logits)).all()


def test_same_seed_same_draws():
    s = Sampling(temperature=1.0)
    np.testing.assert_array_equal(draws(LOGITS, s, 200, seed=3), draws(LOGITS, s, 200, seed=3))
    assert (draws(LOGITS, s, 200, seed=3) != draws(LOGITS, s, 200, seed=4)).any()


def test_temperature_one_follows_the_distribution():
    freq = np.bincount(draws(LOGITS, Sampling(temperature=1.0), 20000), minlength=5) / 20000
    np.testing.assert_allclose(freq, np.exp(LOGITS), atol=0.015)


def test_top_k_never_draws_outside_the_k_best():
    assert set(draws(LOGITS, Sampling(temperature=1.0, top_k=2))) == {0, 1}


def test_top_p_keeps_the_smallest_set_reaching_p():
    # 0.5 + 0.2 = 0.7 < 0.75, so the token crossing the threshold (0.15) is kept too.
    assert set(draws(LOGITS, Sampling(temperature=1.0, top_p=0.75))) == {0, 1, 2}
    assert set(draws(LOGITS, Sampling(temperature=1.0, top_p=0.69))) == {0, 1}


def test_top_p_on_a_flat_large_vocabulary_widens_its_window():
    logits = np.zeros(5000, dtype=np.float32)
    logits[:3] = 20.0  # three tokens share almost all the mass
    assert set(draws(logits, Sampling(temperature=1.0, top_p=0.9), n=300)) <= {0, 1, 2}
    flat = np.zeros(5000, dtype=np.float32)
    got = draws(flat, Sampling(temperature=1.0, top_p=0.5), n=3000)
    assert len(set(got)) > 1000 and got.max() < 5000


def test_min_p_drops_tokens_below_a_fraction_of_the_best():
    # p_max = 0.5; min_p = 0.29 keeps p >= 0.145: tokens 0, 1, 2.
    assert set(draws(LOGITS, Sampling(temperature=1.0, min_p=0.29))) == {0, 1, 2}


def test_filters_compose_and_the_best_token_survives():
    got = draws(LOGITS, Sampling(temperature=5.0, top_k=3, top_p=0.1, min_p=0.9))
    assert set(got) == {0}


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = np.array([2.0, 1.9, -1.0, -1.1], dtype=np.float32)
    greedy_penalised = Sampling(temperature=0.0, repetition_penalty=2.0)
    rng = np.random.default_rng(0)
    # 2.0 / 2 = 1.0 < 1.9: token 1 wins once token 0 was seen.
    assert sample(logits, greedy_penalised, rng, recent_ids=[0]) == 1
    # A negative logit gets more negative: -1.0 * 2 = -2.0 < -1.1.
    only_negative = np.array([-1.0, -1.1], dtype=np.float32)
    assert sample(only_negative, greedy_penalised, rng, recent_ids=[0]) == 1
    # Repeats in the window count once: 2.0 / 2 (not / 4) still beats 0.9.
    assert sample(np.array([2.0, 0.9], np.float32), greedy_penalised, rng, [0, 0, 0]) == 0


def test_sample_does_not_modify_the_logits():
    logits = LOGITS.copy()
    draws(logits, Sampling(temperature=0.7, top_k=3, repetition_penalty=1.3), 10, recent=[0])
    np.testing.assert_array_equal(logits, LOGITS)


# ---------------------------------------------------------------- StopChecker


def run(checker, pieces):
    out = [checker.push(p) for p in pieces]
    return "".join(out) + ("" if checker.stopped else checker.flush())


def test_stop_string_split_across_chunks_is_held_back_then_cut():
    c = StopChecker(stops=["<|end|>"])
    assert c.push("Hello <|") == "Hello "
    assert c.push("en") == ""
    assert c.push("d|> ignored") == ""
    assert c.stopped and c.matched == StopString("<|end|>")


def test_held_text_is_released_when_it_stops_matching():
    c = StopChecker(stops=["STOP"])
    assert c.push("a ST") == "a "
    assert c.push("ar") == "STar"
    assert not c.stopped


def test_included_stop_string_stays_in_the_output():
    tag = "</｜DSML｜tool_calls>"
    c = StopChecker(stops=[StopString(tag, include=True), "\n\nUser:"])
    text = run(c, ["<｜DSML｜tool_calls>...</｜DSML", "｜tool_calls>", " trailing"])
    assert text == "<｜DSML｜tool_calls>..." + tag
    assert c.matched.include


def test_stop_token_ends_without_its_text_but_releases_held_text():
    c = StopChecker(stop_ids=[2], stops=["###"])
    assert c.push("done #") == "done "
    assert c.push("<|im_end|>", token_id=2) == "#"
    assert c.stopped and c.matched == 2
    assert c.push("more") == ""


def test_earliest_stop_wins():
    c = StopChecker(stops=["bb", "abc"])
    assert run(c, ["xxabcbb"]) == "xx"
    assert c.matched.text == "abc"


def test_flush_returns_held_text_at_length_limit():
    c = StopChecker(stops=["</end>"])
    assert c.push("value </e") == "value "
    assert c.flush() == "</e"


def test_empty_stop_string_is_rejected():
    with pytest.raises(ValueError):
        StopChecker(stops=[""])


@given(
    text=st.text(alphabet="ab<>/x", max_size=40),
    cuts=st.lists(st.integers(0, 40), max_size=8),
    stop=st.text(alphabet="ab<>/", min_size=1, max_size=5),
    include=st.booleans(),
)
def test_any_chunking_emits_the_text_before_the_first_stop(text, cuts, stop, include):
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    got = run(StopChecker(stops=[StopString(stop, include)]), pieces)
    i = text.find(stop)
    want = text if i < 0 else text[: i + len(stop)] if include else text[:i]
    assert got == want
