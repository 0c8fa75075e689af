"""The ensemble's tie rule (the book's Counter.most_common under Python 2.7) and the vote of
every five-net subset, against hand-worked cases and against CPython 2.7 itself.

tests/data/python27_counter_votes.txt.gz holds, for each of the 100,000 ordered votes of five
digits (itertools.product order), the winner that CPython 2.7.18 gave: it is the output of
tests/data/python27_counter_votes.py, run as `python2.7 tests/data/python27_counter_votes.py |
gzip -9 -n`.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mnistbench import ensemble
from mnistbench.recipes import get_recipe, published_selection_text

SCRIPT = Path(__file__).with_name("python27_counter_votes.py")
# What CPython 2.7 printed for every vote (the script's output): made where python2.7 exists,
# git-ignored like all data (`python2.7 tests/python27_counter_votes.py | gzip > this file`).
TABLE = Path(__file__).parent / "data" / "python27_counter_votes.txt.gz"


def python27_table() -> np.ndarray:
    if not TABLE.exists():
        pytest.skip(f"{TABLE} not made here (needs python2.7: see tests/python27_counter_votes.py)")
    text = gzip.decompress(TABLE.read_bytes())
    return np.frombuffer(text, dtype=np.uint8) - ord("0")


def test_python2_dict_order_by_hand():
    # 0-7 sit in their own slots of the 8-slot table; 8 and 9 share slots 0 and 1
    assert ensemble.python2_dict_order([4, 4, 8, 8, 2]) == [8, 2, 4]  # 8 in the free slot 0
    # 0 first takes slot 0; 8 then probes 5 * 0 + 8 + 1 = 9 -> slot 1
    assert ensemble.python2_dict_order([0, 8, 8, 0, 5]) == [0, 8, 5]
    # 8 first takes slot 0; 0 then probes 5 * 0 + 0 + 1 = 1 -> slot 1: the order of the nets counts
    assert ensemble.python2_dict_order([8, 0, 0, 8, 5]) == [8, 0, 5]
    # 9 first takes slot 1; 1 then probes 5 * 1 + 1 + 1 = 7 -> slot 7
    assert ensemble.python2_dict_order([9, 1, 1, 9, 3]) == [9, 3, 1]
    # 1 first; 9 probes 5 * 1 + 9 + 1 = 15 -> slot 7
    assert ensemble.python2_dict_order([1, 9, 9, 1, 3]) == [1, 3, 9]


def test_tie_rules_by_hand():
    assert ensemble.plurality([4, 4, 8, 8, 2]) == 8
    assert ensemble.plurality([4, 4, 8, 8, 2], "lowest") == 4
    assert ensemble.plurality([8, 0, 0, 8, 5]) == 8 and ensemble.plurality([0, 8, 8, 0, 5]) == 0
    assert ensemble.plurality([3, 5, 5, 3, 9]) == 3  # no 8 or 9 in a tie: the lowest digit
    assert ensemble.plurality([7, 2, 2, 7, 7]) == 7  # no tie
    assert ensemble.plurality_vote(["4", "4", "8", "8", "2"]).tolist() == [8]
    assert ensemble.plurality_vote(["4", "4", "8", "8", "2"], "lowest").tolist() == [4]


def test_book_rule_equals_cpython27_for_every_five_digit_vote():
    book, py27 = ensemble.vote_table("book"), python27_table()
    assert len(py27) == 100_000
    assert np.array_equal(book, py27)
    # the lowest-digit rule is not the book's: they differ on 18,222 of the ordered votes
    assert int((ensemble.vote_table("lowest") != py27).sum()) == 18_222


@pytest.mark.skipif(shutil.which("python2.7") is None, reason="no python2.7 on PATH")
def test_fixture_is_what_python27_prints():
    result = subprocess.run(["python2.7", str(SCRIPT)],
                            capture_output=True, timeout=120)
    if result.returncode != 0:  # e.g. a pyenv shim without 2.7 selected
        pytest.skip(result.stderr.decode()[-200:])
    assert np.array_equal(np.frombuffer(result.stdout, dtype=np.uint8) - ord("0"), python27_table())


def test_subset_votes_by_hand():
    # one image, label 4; six nets vote 4 4 8 8 2 4. Subsets of five, in combinations order,
    # leave out nets 6, 5, 4, 3, 2, 1:
    #   4 4 8 8 2 -> tie 4/8: book 8 (wrong), lowest 4     4 4 8 8 4 -> 4
    #   4 4 8 2 4 -> 4    4 4 8 2 4 -> 4    4 8 8 2 4 (twice) -> tie: book 8, lowest 4
    nets, labels = ["4", "4", "8", "8", "2", "4"], [4]
    assert ensemble.subset_votes(nets, labels).tolist() == [0, 100, 100, 100, 0, 0]
    assert ensemble.subset_votes(nets, labels, "lowest").tolist() == [100] * 6
    # five nets: one subset, the plain vote
    assert ensemble.subset_votes(nets[:5], labels).tolist() == [0]


def test_official_test_labels_are_mnists(data_dir):
    labels = ensemble.official_test_labels(data_dir)
    assert len(labels) == 10_000 and labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_the_ensemble_row_says_what_votes():
    assert published_selection_text(get_recipe("nielsen_ch6_ensemble")) == (
        "plurality vote of five final-epoch nets")
