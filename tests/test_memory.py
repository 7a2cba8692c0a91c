"""The size check before anything is allocated (rnnsgd.memory.check_fits): it refuses what cannot fit, names
the key that makes the config too big, and lets ordinary configs through."""

from __future__ import annotations

import pytest

from rnnsgd.config import TrialConfig
from rnnsgd.memory import available_memory, check_fits, estimate_bytes, format_bytes

GiB = 2**30


@pytest.mark.parametrize(
    ("flat", "key"),
    [
        ({"model.m": 10**6}, "model.m=1000000"),
        ({"data.N": 10**12}, "data.N=1000000000000"),
        ({"data.n_test": 10**9}, "data.n_test=1000000000"),
        ({"data.L": 10**8}, "data.L=100000000"),
        ({"train.eps": 1e-300}, "train.eps=1e-300"),  # its schedule's T: one interval's samples
        ({"train.T": 10**12, "model.m": 512}, "train.T=1000000000000"),  # the biggest of two changed keys
    ],
)
def test_too_big_names_the_key_and_both_sizes(flat, key):
    cfg = TrialConfig().replace(**flat)
    with pytest.raises(ValueError) as info:
        check_fits(cfg, 16 * GiB, "of memory available on this machine")
    message = str(info.value)
    assert message.startswith(f"{key}: one model of this config needs about "), message
    assert message.endswith("more than the 16 GiB of memory available on this machine")
    assert format_bytes(estimate_bytes(cfg, 1)) in message


def test_ordinary_configs_fit_this_machine():
    for cfg in (TrialConfig(), TrialConfig().replace(**{"model.m": 1024, "data.L": 64, "data.N": 2**14})):
        assert estimate_bytes(cfg, 1) < 2 * GiB
        check_fits(cfg, available_memory(), "of memory available on this machine")
    assert 0 < available_memory() <= 2**50


def test_format_bytes():
    expected = ["512 bytes", "1.5 KiB", "3 MiB", "1.5 GiB", "1.02e+03 TiB"]
    assert [format_bytes(n) for n in (512, 1536, 3 * 2**20, 1.5 * GiB, 2**50)] == expected
