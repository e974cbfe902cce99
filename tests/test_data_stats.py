"""`megastride stats`: entropy baselines of a store's windows against hand-computed values."""

import json
import math

import numpy as np
import pytest

from megastride.data_shards import open_store
from megastride.data_shards.stats import store_entropies, window_entropies
from megastride.launch.stats import main as stats_main


def test_window_entropies_of_known_sequences():
    assert window_entropies(np.zeros(1000, dtype=np.uint8)) == (0.0, 0.0)
    alternating = np.tile(np.array([3, 7], dtype=np.uint8), 500)
    unigram, previous = window_entropies(alternating)
    assert unigram == pytest.approx(1.0) and previous == pytest.approx(0.0)
    # a byte from {0..3} uniformly, then its copy: 2 bits each; given the previous byte v the next
    # is v with probability 1/2 + 1/8 and each other value with 1/8
    rng = np.random.default_rng(0)
    x = np.repeat(rng.integers(0, 4, 20000), 2).astype(np.uint8)
    unigram, previous = window_entropies(x)
    expected = -(0.625 * math.log2(0.625) + 3 * 0.125 * math.log2(0.125))
    assert unigram == pytest.approx(2.0, abs=0.01) and previous == pytest.approx(expected, abs=0.01)
    skew = np.array([0] * 750 + [1] * 250, dtype=np.uint8)
    assert window_entropies(skew)[0] == pytest.approx(-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)))


def test_store_entropies_and_cli(text_store, capsys):
    store = open_store(text_store)
    r = store_entropies(store, "train", 4096, windows=5, seed=3)
    assert 2.0 < r["previous_byte"]["mean"] < r["unigram"]["mean"] < 6.0  # English-like text and code
    assert r["unigram"]["min"] <= r["unigram"]["mean"] <= r["unigram"]["max"]
    assert store_entropies(store, "train", 4096, windows=5, seed=3) == r  # seeded
    assert stats_main([text_store, "--seq-len", "4096", "--windows", "5", "--seed", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == r
    assert stats_main([text_store, "--seq-len", "4096", "--windows", "2"]) == 0
    assert "biased low" in capsys.readouterr().out  # short windows: the previous-byte number is flagged
    for bad, message in ((["--seq-len", str(10**9)], "does not fit"), (["--split", "nope"], "no split 'nope'"),
                         (["--windows", "0"], "windows must be >= 1")):
        with pytest.raises(SystemExit) as exit_:
            stats_main([text_store, *bad])
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("megastride stats: error: ") and message in err and "\n" not in err
