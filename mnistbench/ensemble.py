"""The chapter-6 ensemble: a plurality vote of five trained dropout nets' test predictions.

Each training run stores its final-epoch predictions on the official test set in metrics.json
("test_predictions", 10,000 digits), so the vote needs no model and no GPU. A group of runs is
written as a metrics.json of its own, with the same keys as a run, so the tables treat an
ensemble like any other row; `subset_votes` judges every five-net ensemble the record holds.

The tie rule is the book's. `src/conv.py` (mnielsen/neural-networks-and-deep-learning) votes with
`Counter(p).most_common(1)[0][0]` under Python 2.7, p being the five nets' predictions in the
order the nets were trained. Why that is the order `python2_dict_order` computes:

- Counter.update (pure Python in 2.7) inserts each digit the first time it is seen, in p's order.
- most_common(1) is heapq.nlargest(1, ...), which 2.7 short-cuts to max(..., key=count): the
  first item of the dict's iteration order among those with the highest count wins.
- A CPython 2.7 dict iterates over its hash table's slots in index order. Five keys or fewer
  never resize the initial 8-slot table (a resize needs 3 * fill >= 2 * 8, i.e. 6 keys). A
  digit d (int or numpy.int64, both hash to d) goes to slot d & 7; when that slot is taken it
  probes i = 5 * i + perturb + 1 (perturb starts at d and is shifted right by 5 after each
  probe), the order of dictobject.c's lookdict.

So 0-7 iterate as 0-7, but 8 and 9 share slots 0 and 1 with 0 and 1 and land where the probe
sends them: e.g. a 4-4-8-8-2 tie goes to 8 (slot 0, before 4), while the lowest-digit rule says 4.
tests/test_ensemble_votes.py checks this order against CPython 2.7 itself for every five-digit
vote. The lowest-digit rule, what mnistbench used before, is kept as a measured deviation.
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache

import numpy as np
import torch

from .recipes import ENSEMBLE_SIZE as SIZE, ENSEMBLE_VOTE_RULE as VOTE_RULE

TIE_RULES = {
    "book": "ties go to the first tied digit in CPython 2.7's dict order (the book's "
            "Counter(p).most_common(1) over the nets in training order)",
    "lowest": "ties go to the lowest tied digit",
}


def python2_dict_order(digits) -> list[int]:
    """The iteration order of a CPython 2.7 dict (8 slots) after inserting `digits` in order."""
    slots: list[int | None] = [None] * 8
    for digit in digits:
        if digit in slots:
            continue
        i, perturb = digit & 7, digit
        while slots[i & 7] is not None:
            i = 5 * i + perturb + 1
            perturb >>= 5
        slots[i & 7] = digit
    return [d for d in slots if d is not None]


def plurality(votes, rule: str = "book") -> int:
    """The winning digit of one image's votes (nets in training order) under a tie rule."""
    counts = {d: list(votes).count(d) for d in set(votes)}
    top = max(counts.values())
    order = python2_dict_order(votes) if rule == "book" else sorted(counts)
    return next(d for d in order if counts[d] == top)


@lru_cache(maxsize=None)
def vote_table(rule: str = "book", size: int = SIZE) -> np.ndarray:
    """The winner of every ordered vote of `size` digits, indexed by the vote read as a base-10
    number (first net's digit first): 10**size entries."""
    return np.array([plurality(v, rule) for v in itertools.product(range(10), repeat=size)],
                    dtype=np.uint8)


def _digits(predictions: list[str]) -> np.ndarray:
    return np.stack([np.frombuffer(p.encode(), dtype=np.uint8) - ord("0") for p in predictions])


def plurality_vote(predictions: list[str], rule: str = "book") -> torch.Tensor:
    """The plurality digit per test image of five nets' predictions (in training order)."""
    votes = _digits(predictions).astype(np.int64)
    code = sum(votes[j] * 10 ** (len(predictions) - 1 - j) for j in range(len(predictions)))
    return torch.from_numpy(vote_table(rule, len(predictions))[code].astype(np.int64))


def subset_votes(predictions: list[str], labels, rule: str = "book",
                 size: int = SIZE) -> np.ndarray:
    """The accuracy (percent) of the vote of every `size`-net subset of the nets, exact: one
    value per subset, in itertools.combinations order; each subset votes in the nets' given
    order (the book's tie rule depends on it)."""
    votes = _digits(predictions).astype(np.int32)
    labels = np.asarray(labels).astype(np.uint8)
    table = vote_table(rule, size)
    accuracies = np.empty(math.comb(len(predictions), size))
    for s, subset in enumerate(itertools.combinations(range(len(predictions)), size)):
        code = sum(votes[m] * 10 ** (size - 1 - j) for j, m in enumerate(subset))
        accuracies[s] = round(int((table[code] == labels).sum()) / len(labels) * 100, 2)
    return accuracies


def official_test_labels(data_dir=None) -> np.ndarray:
    """The 10,000 official test labels, from MNIST itself (data.load_mnist: --data-dir,
    $MNISTBENCH_DATA_DIR or ./data, fetched like any training job's data if missing)."""
    from .data import load_mnist

    return load_mnist(data_dir)[3].numpy()


def vote(recipe, members: list[tuple[str, dict]], group: int, test_labels: torch.Tensor) -> dict:
    """The ensemble record of one group of member runs (path, metrics): record.ensemble_record.

    Fewer than five finished members (diverged runs, or a study with fewer seeds) give status
    "not_enough_runs" and no accuracy: the tables must show the gap, not a made-up number.
    """
    from .record import ensemble_record
    from .train import accuracy, environment, resolve_device

    members = sorted(members, key=lambda m: m[1].get("seed") or 0)
    usable = [(p, m) for p, m in members
              if m.get("status") == "finished" and m.get("test_predictions")]
    predictions = score = None
    if len(usable) < SIZE:
        note = (f"not enough runs: {len(usable)} of {SIZE} finished {recipe.members} runs "
                f"in this group (seeds {', '.join(str(m.get('seed')) for _, m in members)})")
    else:
        predictions = plurality_vote([m["test_predictions"] for _, m in usable[:SIZE]])
        score = accuracy(predictions, test_labels.long())
        note = (f"plurality vote of {recipe.members} seeds "
                f"{', '.join(str(m.get('seed')) for _, m in usable[:SIZE])}")
    # the members' config says best_validation; the vote uses their final-epoch nets
    return ensemble_record(recipe, group, members, finished=len(usable), accuracy=score,
                           test_predictions=predictions, note=note,
                           vote={"ensemble_size": SIZE, "vote": VOTE_RULE, "selection": "final"},
                           environment=environment(resolve_device("cpu")))
