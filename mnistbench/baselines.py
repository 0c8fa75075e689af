"""Chapter 1's two non-network baselines, run on the book's data (first 50,000 images, [0, 1])."""

from __future__ import annotations

import time

import torch

from .data import Splits, make_splits


def average_darkness(data: Splits) -> torch.Tensor:
    """mnist_average_darkness.py: guess the digit whose mean total ink is closest to the image's."""
    ink = data.train_x.flatten(1).sum(1)
    means = torch.stack([ink[data.train_y == d].mean() for d in range(10)])
    test_ink = data.test_x.flatten(1).sum(1)
    return (test_ink[:, None] - means[None, :]).abs().argmin(1)


def svm(data: Splits) -> torch.Tensor:
    """mnist_svm.py: scikit-learn's SVC with the defaults of its day.

    The book's scikit-learn defaulted to gamma = 1/n_features; today's default is "scale", which
    scores about 3 points higher on MNIST, so we pass gamma="auto" (= 1/n_features) explicitly.
    """
    try:
        from sklearn.svm import SVC
    except ImportError:
        raise RuntimeError("the SVM baseline needs scikit-learn: pip install scikit-learn") from None
    classifier = SVC(gamma="auto")
    classifier.fit(data.train_x.flatten(1).cpu().numpy(), data.train_y.cpu().numpy())
    return torch.from_numpy(classifier.predict(data.test_x.flatten(1).cpu().numpy()))


BASELINES = {"nielsen_ch1_darkness": average_darkness, "nielsen_ch1_svm": svm}  # recipes.BASELINE_IDS


def run_baseline(recipe, seed: int, data_dir=None) -> dict:
    """Run a baseline recipe on the book's data and return its record (metrics.json)."""
    from .record import baseline_record
    from .train import accuracy, environment, resolve_device

    data = make_splits("nielsen", recipe.scaling, data_dir=data_dir)
    started = time.perf_counter()
    predictions = BASELINES[recipe.id](data)
    return baseline_record(recipe, seed, accuracy=accuracy(predictions, data.test_y),
                           train_images=len(data.train_x), seconds=time.perf_counter() - started,
                           test_predictions=predictions, environment=environment(resolve_device("cpu")))
