"""The chapter-6 ensemble: a plurality vote of five trained dropout nets' test predictions.

Each training run stores its final-epoch predictions on the official test set in metrics.json
("test_predictions", 10,000 digits), so the vote needs no model and no GPU. A group of runs is
written as a metrics.json of its own, with the same keys as a run, so the tables treat an
ensemble like any other row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SIZE = 5  # the book votes five nets
VOTE_RULE = "plurality of the members' final-epoch test predictions; ties go to the lowest digit"


def plurality_vote(predictions: list[str]) -> torch.Tensor:
    """The most frequent digit per test image; on a tie the lowest of the tied digits."""
    votes = torch.stack([torch.frombuffer(bytearray(p.encode()), dtype=torch.uint8) - ord("0")
                         for p in predictions])
    counts = F.one_hot(votes.long(), 10).sum(0)  # [images, digits]
    return counts.argmax(1)  # argmax returns the first maximum: the lowest tied digit


def member_summary(metrics: dict, path: str) -> dict:
    return {"seed": metrics.get("seed"), "status": metrics.get("status"),
            "final_test_accuracy": metrics.get("final_test_accuracy"), "metrics": str(path),
            "mlflow_run_id": (metrics.get("extra_state") or {}).get("mlflow_run_id")}


def vote(recipe, members: list[tuple[str, dict]], group: int, test_labels: torch.Tensor) -> dict:
    """The ensemble result of one group of member runs (path, metrics), as a metrics.json dict.

    Fewer than five finished members (diverged runs, or a study with fewer seeds) give status
    "not_enough_runs" and no accuracy: the tables must show the gap, not a made-up number.
    """
    from .train import accuracy

    members = sorted(members, key=lambda m: m[1].get("seed") or 0)
    usable = [(p, m) for p, m in members
              if m.get("status") == "finished" and m.get("test_predictions")]
    first = members[0][1] if members else {}
    config = {**(first.get("config") or {}), "recipe": recipe.id, "published_id": recipe.id,
              "members_recipe": recipe.members, "group": group, "ensemble_size": SIZE,
              "vote": VOTE_RULE}
    config.pop("seed", None)
    result = {
        "schema": 1, "recipe": recipe.id, "published_id": recipe.id,
        "protocol": first.get("protocol"), "seed": None, "group": group, "lr": first.get("lr"),
        "published_accuracy": recipe.published_accuracy,
        "members": [member_summary(m, p) for p, m in members],
        "members_finished": len(usable),
        "config": config, "history": [], "selected_epoch": None, "final_val_accuracy": None,
        "train_seconds": None, "eval_seconds": None, "images_per_second": None,  # see the members
    }
    if len(usable) < SIZE:
        return {**result, "status": "not_enough_runs", "selected_accuracy": None,
                "final_test_accuracy": None, "test_predictions": None,
                "note": f"not enough runs: {len(usable)} of {SIZE} finished {recipe.members} runs "
                        f"in this group (seeds {', '.join(str(m.get('seed')) for _, m in members)})"}
    predictions = plurality_vote([m["test_predictions"] for _, m in usable[:SIZE]])
    score = accuracy(predictions, test_labels.long())
    return {**result, "status": "finished", "selected_accuracy": score,
            "final_test_accuracy": score,
            "test_predictions": "".join(map(str, predictions.tolist())),
            "note": f"plurality vote of {recipe.members} seeds "
                    f"{', '.join(str(m.get('seed')) for _, m in usable[:SIZE])}"}
