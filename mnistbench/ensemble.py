"""The chapter-6 ensemble: a plurality vote of five trained dropout nets' test predictions.

Each training run stores its final-epoch predictions on the official test set in metrics.json
("test_predictions", 10,000 digits), so the vote needs no model and no GPU. A group of runs is
written as a metrics.json of its own, with the same keys as a run, so the tables treat an
ensemble like any other row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .recipes import ENSEMBLE_SIZE as SIZE, ENSEMBLE_VOTE_RULE as VOTE_RULE


def plurality_vote(predictions: list[str]) -> torch.Tensor:
    """The most frequent digit per test image; on a tie the lowest of the tied digits."""
    votes = torch.stack([torch.frombuffer(bytearray(p.encode()), dtype=torch.uint8) - ord("0")
                         for p in predictions])
    counts = F.one_hot(votes.long(), 10).sum(0)  # [images, digits]
    return counts.argmax(1)  # argmax returns the first maximum: the lowest tied digit


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
    return ensemble_record(recipe, group, members, finished=len(usable), accuracy=score,
                           test_predictions=predictions, note=note,
                           vote={"ensemble_size": SIZE, "vote": VOTE_RULE},
                           environment=environment(resolve_device("cpu")))
