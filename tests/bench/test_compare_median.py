"""bench/compare.py's per-figure medians over rounds: every key of every round is kept, in first-seen order, and a
key some rounds lack gets the median over the rounds that have it."""

from __future__ import annotations

from bench.compare import _median_tree, median_of


def test_a_status_seen_only_in_a_later_round_is_kept() -> None:
    rounds = [{"statuses": {200: 10}}, {"statuses": {200: 9, 429: 1}}, {"statuses": {200: 10}}]
    assert _median_tree(rounds) == {"statuses": {200: 10, 429: 1}}


def test_keys_come_in_first_seen_order_over_all_rounds() -> None:
    rounds = [{"b": 1}, {"c": 2, "b": 3}, {"a": 4, "b": 5}]
    assert list(_median_tree(rounds)) == ["b", "c", "a"]


def test_a_missing_key_gets_the_median_of_the_rounds_that_have_it() -> None:
    rounds = [{"p50_ms": 1.0}, {"p50_ms": 3.0, "server_stages": {"queue_ms": {"p50": 10.0}}},
              {"p50_ms": 5.0, "server_stages": {"queue_ms": {"p50": 20.0}, "inference_ms": {"p50": 7.0}}}]
    assert _median_tree(rounds) == {"p50_ms": 3.0, "server_stages": {"queue_ms": {"p50": 15.0},
                                                                      "inference_ms": {"p50": 7.0}}}


def test_integers_stay_integers_and_other_values_are_the_first_rounds() -> None:
    assert _median_tree([{"n": 3, "label": "x"}, {"n": 1, "label": "y"}, {"n": 2}]) == {"n": 2, "label": "x"}
    assert _median_tree([1, 2]) == 1.5


def test_median_of_leaves_failed_rounds_out_and_keeps_a_late_status() -> None:
    rounds = [
        {"systems": {"ours": {"error": "did not start"}}},
        {"systems": {"ours": {"scenarios": {"c1x1": {"statuses": {200: 8}, "p99_ms": 4.0}}}}},
        {"systems": {"ours": {"scenarios": {"c1x1": {"statuses": {200: 7, 503: 1}, "p99_ms": 6.0}}}}},
    ]
    assert median_of(rounds, "systems") == {
        "ours": {"scenarios": {"c1x1": {"statuses": {200: 7.5, 503: 1}, "p99_ms": 5.0}}}}
