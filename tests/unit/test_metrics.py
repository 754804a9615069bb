"""Δm% (Maninis et al. 2019) on hand-computed cases."""

from __future__ import annotations

import pytest

from multitask.training.metrics import delta_m


def test_delta_m_hand_computed() -> None:
    # left: (0.90 - 0.80) / 0.80 = +12.5%; right: (0.72 - 0.80) / 0.80 = -10%; mean +1.25%
    value = delta_m({"left": 0.90, "right": 0.72}, {"left": 0.80, "right": 0.80},
                    {"left": True, "right": True})
    assert value == pytest.approx(1.25)


def test_delta_m_lower_is_better_flips_sign() -> None:
    # an error that drops from 0.2 to 0.1 is a +50% improvement
    assert delta_m({"err": 0.1}, {"err": 0.2}, {"err": False}) == pytest.approx(50.0)


def test_delta_m_equal_to_baselines_is_zero() -> None:
    assert delta_m({"a": 0.5, "b": 0.7}, {"a": 0.5, "b": 0.7}, {"a": True, "b": True}) == 0.0


def test_delta_m_needs_the_same_tasks() -> None:
    with pytest.raises(ValueError, match="same tasks"):
        delta_m({"a": 0.5}, {"b": 0.5}, {"a": True})
