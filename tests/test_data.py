import gzip
import shutil

import pytest
import torch

from mnistbench.data import (ARTICLE_MEAN, ARTICLE_STD, MNIST_FILES, DataError, load_mnist,
                             make_splits, shifted_copies)


def test_splits_have_the_published_sizes(data_dir):
    nielsen = make_splits("nielsen", "k/255", data_dir=data_dir)
    assert (len(nielsen.train_x), len(nielsen.val_x), len(nielsen.test_x)) == (50_000, 10_000, 10_000)
    official = make_splits("official", "k/255", data_dir=data_dir)
    assert (len(official.train_x), official.val_x, len(official.test_x)) == (60_000, None, 10_000)
    # nielsen = first 50,000 for training, last 10,000 of the official training set for validation
    assert torch.equal(nielsen.train_x, official.train_x[:50_000])
    assert torch.equal(nielsen.val_x, official.train_x[50_000:])
    assert nielsen.train_x.shape[1:] == (1, 28, 28) and nielsen.train_y.dtype == torch.long


def test_pixel_scaling(data_dir):
    totensor = make_splits("official", "k/255", data_dir=data_dir).train_x
    assert totensor.min() == 0.0 and totensor.max() == 1.0  # ToTensor(): k/255
    book = make_splits("nielsen", "k/256", data_dir=data_dir).train_x
    assert book.max() == 255 / 256  # mnist.pkl.gz: k/256
    assert torch.equal(book * 256, (totensor[:50_000] * 255).round())
    normalized = make_splits("official", "normalized", data_dir=data_dir).train_x
    assert torch.allclose(normalized, (totensor - ARTICLE_MEAN) / ARTICLE_STD)
    # the articles' constants are MNIST's own mean and std, to about 3 decimals
    assert abs(normalized.mean().item()) < 0.01 and abs(normalized.std().item() - 1) < 0.01
    with pytest.raises(ValueError, match="unknown pixel scaling"):
        make_splits("official", "raw", data_dir=data_dir)


@pytest.mark.parametrize("recipe_id", ["seed_dense_mse", "seed_simple_conv", "seed_2conv",
                                       "seed_relu_wd01", "seed_relu", "seed_relu_extended",
                                       "seed_final", "seed_final_lr005"])
def test_article_recipes_train_on_unnormalised_pixels(recipe_id, data_dir):
    """Every published article number came from ToTensor() alone: pixels k/255 in [0, 1]."""
    from mnistbench.recipes import get_recipe
    from mnistbench.train import load_data

    recipe = get_recipe(recipe_id).with_overrides(train_subset=2000)
    data = load_data(recipe, data_dir)
    for x in (data.train_x, data.test_x):
        assert x.min() == 0.0 and x.max() == 1.0
    assert torch.equal(data.test_x * 255, (data.test_x * 255).round())  # whole multiples of 1/255


@pytest.mark.parametrize("scaling,black", [("k/256", 0.0), ("k/255", 0.0),
                                           ("normalized", -ARTICLE_MEAN / ARTICLE_STD)])
def test_shifted_images_are_filled_black_in_pixel_space(scaling, black, data_dir):
    """The row or column a shift uncovers is pixel 0 (black) under every scaling: after
    normalisation that is -mean/sd, not 0 (which would be grey)."""
    plain = make_splits("official", scaling, train_subset=50, data_dir=data_dir).train_x
    expanded = make_splits("official", scaling, expand=True, train_subset=50, data_dir=data_dir).train_x
    black = torch.tensor(black, dtype=torch.float32)
    for i in range(50):
        original, down, up, right, left = (expanded[5 * i + k, 0] for k in range(5))
        assert torch.equal(original, plain[i, 0])
        for edge in (down[0], up[-1], right[:, 0], left[:, -1]):
            assert torch.allclose(edge, black.expand_as(edge), rtol=0, atol=1e-6)
        assert torch.equal(down[1:], original[:-1]) and torch.equal(left[:, :-1], original[:, 1:])


def test_shifted_copies_move_each_image_by_one_pixel_with_zero_fill(data_dir):
    # real digits with ink on row 0, row 27, column 0 and column 27: a shift that wraps, or
    # leaves the uncovered line as it was, differs from a black fill only on such images
    x = load_mnist(str(data_dir))[0][[12352, 71, 1322, 615]]
    assert x[0, 0].any() and x[1, -1].any() and x[2, :, 0].any() and x[3, :, -1].any()
    out = shifted_copies(x)
    assert out.shape == (20, 28, 28)
    for i in range(4):
        image, down, up, right, left = (out[5 * i + k] for k in range(5))
        original = x[i]
        assert torch.equal(image, original)
        assert torch.equal(down[1:], original[:-1]) and down[0].abs().sum() == 0
        assert torch.equal(up[:-1], original[1:]) and up[-1].abs().sum() == 0
        assert torch.equal(right[:, 1:], original[:, :-1]) and right[:, 0].abs().sum() == 0
        assert torch.equal(left[:, :-1], original[:, 1:]) and left[:, -1].abs().sum() == 0
        # a real digit has ink: each shift moves it, so no copy equals the original
        assert all(not torch.equal(s, original) for s in (down, up, right, left))


def test_expanded_sets_have_five_times_the_images(data_dir):
    nielsen = make_splits("nielsen", "k/256", expand=True, shuffle_expanded=True, data_dir=data_dir)
    assert len(nielsen.train_x) == 250_000 and len(nielsen.val_x) == 10_000  # validation not expanded
    plain = make_splits("nielsen", "k/256", data_dir=data_dir)
    assert torch.equal(torch.bincount(nielsen.train_y), 5 * torch.bincount(plain.train_y))
    again = make_splits("nielsen", "k/256", expand=True, shuffle_expanded=True, data_dir=data_dir)
    assert torch.equal(nielsen.train_y, again.train_y)  # the one shuffle is fixed, like the book's file
    official = make_splits("official", "normalized", expand=True, train_subset=1000, data_dir=data_dir)
    assert len(official.train_x) == 5_000
    assert make_splits("official", "k/255", expand=True, data_dir=data_dir).train_x.shape[0] == 300_000


def test_train_subset_takes_the_first_images_and_rejects_too_many(data_dir):
    subset = make_splits("nielsen", "k/256", train_subset=1000, data_dir=data_dir)
    full = make_splits("nielsen", "k/256", data_dir=data_dir)
    assert torch.equal(subset.train_x, full.train_x[:1000])
    with pytest.raises(DataError, match="between 1 and 50000"):
        make_splits("nielsen", "k/256", train_subset=50_001, data_dir=data_dir)


def test_missing_files_name_all_four_and_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.delenv("MNISTBENCH_MNIST_MIRROR", raising=False)
    with pytest.raises(DataError) as err:
        load_mnist(str(tmp_path), download=False)
    message = str(err.value)
    assert all(name in message for name in MNIST_FILES) and str(tmp_path) in message


def test_corrupted_archive_is_reported(tmp_path, data_dir):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        shutil.copy(data_dir / "MNIST" / "raw" / name, raw / name)
    archive = raw / "t10k-labels-idx1-ubyte.gz"
    archive.write_bytes(archive.read_bytes()[:-100])  # truncated
    with pytest.raises(DataError, match="corrupted or truncated"):
        load_mnist(str(tmp_path), download=False)


def test_mirror_folder_is_copied_instead_of_downloading(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("MNISTBENCH_MNIST_MIRROR", str(data_dir / "MNIST" / "raw"))
    train_x, train_y, test_x, test_y = load_mnist(str(tmp_path / "fresh"))
    assert train_x.shape == (60_000, 28, 28)
    assert gzip.open(tmp_path / "fresh" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").read(4)
