"""simple_hypersearch's pure functions, their properties, and main() in process
(the installed console script is tested in integration/test_hypersearch_cli.py)."""

from __future__ import annotations

import itertools
import json
import random
import time
from typing import List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simple_gpu_scheduler import hypersearch as hs

# ---------------------------------------------------------------- pure functions


def test_parse_pattern_only_declared_names_are_placeholders() -> None:
    pieces = hs.parse_pattern("a {x} ${HOME} {} {y}{x}", ["x"])
    assert pieces == [("a ", False), ("x", True), (" ${HOME} {} {y}", False), ("x", True)]


def test_parse_pattern_without_names_is_one_literal() -> None:
    assert hs.parse_pattern("echo {}", []) == [("echo {}", False)]
    assert hs.parse_pattern("", []) == []


def test_parse_pattern_names_with_regex_characters() -> None:
    assert hs.parse_pattern("{a.b}{a+}", ["a.b", "a+"]) == [("a.b", True), ("a+", True)]


@pytest.mark.parametrize(
    "pattern, params, message",
    [
        ("{lr}", [], r"placeholder \{lr\} but no -p was given"),
        ("{lr} {bs}", [("lr", ["1"])], r"placeholder \{bs\} but no -p bs"),
        ("{lr}", [("lr", ["1"]), ("bs", ["2"])], r"-p bs is never used"),
        ("{lr}", [("lr", [])], r"-p lr has no values"),
        ("{lr}", [("lr", ["1"]), ("lr", ["2"])], r"-p lr is given more than once"),
        ("{}", [("", ["1"])], r"invalid parameter name"),
    ],
)
def test_check_params_errors(pattern: str, params: hs.Params, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        hs.check_params(hs.parse_pattern(pattern, [n for n, _ in params]), params)


@pytest.mark.parametrize(
    "pattern",
    ["awk '{print $1}' {x}", "echo ${HOME} {x}", "find . -exec rm {} \\; {x}", "{x}{x}"],
)
def test_check_params_accepts_non_placeholder_braces(pattern: str) -> None:
    params = [("x", ["1"])]
    hs.check_params(hs.parse_pattern(pattern, ["x"]), params)


def test_grid_size() -> None:
    assert hs.grid_size([]) == 1
    assert hs.grid_size([3, 3]) == 9
    assert hs.grid_size([10] * 30) == 10**30


def test_render_quotes_values_but_not_plain_ones() -> None:
    pieces = hs.parse_pattern("run {a} --x={b}", ["a", "b"])
    assert hs.render(pieces, {"a": "0.01", "b": "a_b"}) == "run 0.01 --x=a_b"
    assert hs.render(pieces, {"a": "a b", "b": "$HOME"}) == "run 'a b' --x='$HOME'"
    assert hs.render(pieces, {"a": "", "b": "it's"}) == "run '' --x='it'\"'\"'s'"


def test_run_name() -> None:
    assert hs.run_name([("lr", []), ("bs", [])], {"lr": "0.001", "bs": "32"}) == "lr=0.001,bs=32"


def test_argparse_types() -> None:
    assert hs.positive_int("5") == 5
    for bad in ["0", "-1", "x", "1.5", ""]:
        with pytest.raises(Exception, match="positive integer"):
            hs.positive_int(bad)
    assert hs.seed_int("-7") == -7
    with pytest.raises(Exception, match="integer seed"):
        hs.seed_int("abc")


def test_feistel_golden_order() -> None:
    # Pinned so that a seed means the same order on every machine and release.
    assert list(hs.feistel_order(10, b"key")) == [9, 3, 8, 0, 7, 6, 2, 1, 4, 5]


def test_shuffled_order_golden_and_seeded() -> None:
    assert list(hs.shuffled_order(10, random.Random(42))) == [7, 3, 2, 8, 5, 6, 9, 4, 0, 1]
    first = list(itertools.islice(hs.shuffled_order(10**9, random.Random(42)), 5))
    assert first == [363067015, 787648421, 98112893, 250158504, 816220530]


def test_shuffled_order_uses_feistel_above_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hs, "SHUFFLE_LIMIT", 8)
    order = list(hs.shuffled_order(100, random.Random(1)))
    assert sorted(order) == list(range(100)) and order != list(range(100))


def test_feistel_handles_wide_index_spaces() -> None:
    total = 10**200  # halves wider than one hash block
    picks = [hs.feistel_index(i, total, b"k") for i in range(3)]
    assert len(set(picks)) == 3 and all(0 <= p < total for p in picks)


def test_grid_points_huge_grid_is_lazy() -> None:
    params = [(f"p{i}", [str(v) for v in range(10)]) for i in range(9)]
    start = time.monotonic()
    for mode in ("grid", "shuffled_grid"):
        points = list(hs.grid_points(params, mode, 3, random.Random(0)))
        assert len(points) == 3
    assert list(hs.grid_points(params, "grid", 2, random.Random(0)))[1]["p8"] == "1"
    assert time.monotonic() - start < 1


# ---------------------------------------------------------------- properties

sizes_strategy = st.lists(st.integers(min_value=1, max_value=4), min_size=0, max_size=4)


@given(st.integers(min_value=1, max_value=300), st.binary(min_size=1, max_size=16))
@settings(max_examples=60, deadline=None)
def test_feistel_is_a_permutation(total: int, key: bytes) -> None:
    assert sorted(hs.feistel_order(total, key)) == list(range(total))


@given(st.integers(min_value=1, max_value=300), st.integers())
@settings(max_examples=60, deadline=None)
def test_shuffled_order_is_a_permutation(total: int, seed: int) -> None:
    assert sorted(hs.shuffled_order(total, random.Random(seed))) == list(range(total))


@given(sizes_strategy)
def test_decode_index_matches_itertools_product(sizes: List[int]) -> None:
    expected = list(itertools.product(*(range(s) for s in sizes)))
    assert [hs.decode_index(i, sizes) for i in range(hs.grid_size(sizes))] == expected


@given(sizes_strategy)
def test_grid_mode_matches_itertools_product(sizes: List[int]) -> None:
    params = [(f"p{i}", [f"v{j}" for j in range(s)]) for i, s in enumerate(sizes)]
    got = [tuple(pt.values()) for pt in hs.grid_points(params, "grid", None, random.Random())]
    assert got == list(itertools.product(*(values for _, values in params)))


@given(sizes_strategy, st.integers())
def test_seeded_shuffle_matches_0_1_4(sizes: List[int], seed: int) -> None:
    # 0.1.4 did random.seed(seed); random.shuffle(list(product(...))): keep those orders.
    params = [(f"p{i}", [f"v{j}" for j in range(s)]) for i, s in enumerate(sizes)]
    expected = list(itertools.product(*(values for _, values in params)))
    random.Random(seed).shuffle(expected)
    got = hs.grid_points(params, "shuffled_grid", None, random.Random(seed))
    assert [tuple(pt.values()) for pt in got] == expected


@given(sizes_strategy, st.integers(min_value=1, max_value=300), st.integers())
def test_n_samples_are_distinct_grid_points_and_a_prefix(
    sizes: List[int], n: int, seed: int
) -> None:
    params = [(f"p{i}", [f"v{j}" for j in range(s)]) for i, s in enumerate(sizes)]
    grid = set(itertools.product(*(values for _, values in params)))
    sample = [
        tuple(pt.values()) for pt in hs.grid_points(params, "shuffled_grid", n, random.Random(seed))
    ]
    assert len(sample) == min(n, len(grid)) == len(set(sample))
    assert set(sample) <= grid
    full = [tuple(pt.values()) for pt in hs.grid_points(params, "shuffled_grid", None,
                                                         random.Random(seed))]
    assert full[: len(sample)] == sample  # --n-samples N = first N of the same shuffled order


# ---------------------------------------------------------------- in-process main()


def test_main_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert hs.main(["echo {a}", "-p", "a", "1", "2", "--sampling-mode", "grid"]) == 0
    assert capsys.readouterr().out == "echo 1\necho 2\n"


def test_main_without_placeholders_prints_pattern_once(capsys: pytest.CaptureFixture[str]) -> None:
    assert hs.main(["echo {} done"]) == 0
    assert capsys.readouterr().out == "echo {} done\n"
    assert hs.main(["echo hi", "--jsonl"]) == 0
    assert json.loads(capsys.readouterr().out) == {"cmd": "echo hi"}


def test_main_n_samples_above_grid_size(capsys: pytest.CaptureFixture[str]) -> None:
    assert hs.main(["echo {a}", "-p", "a", "1", "2", "--n-samples", "5", "--seed", "0"]) == 0
    captured = capsys.readouterr()
    assert sorted(captured.out.splitlines()) == ["echo 1", "echo 2"]
    assert "grid size 2" in captured.err
