import csv
from pathlib import Path

import pytest

from mnistbench.recipes import UnknownRecipe, all_recipes, get_recipe, published_table

SHARED_TABLE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "published_results.csv"


def test_one_recipe_per_published_row_then_the_variants():
    ids = [row["id"] for row in published_table()]
    assert len(ids) == len(set(ids)) == 32
    recipes = all_recipes()
    assert list(recipes)[:32] == ids
    for recipe_id in list(recipes)[32:]:  # variants replicate a row under another reading
        variant = recipes[recipe_id]
        assert variant.variant and variant.published_id in ids and variant.published_id != recipe_id
        assert variant.published_accuracy == recipes[variant.published_id].published_accuracy


def test_packaged_table_is_the_reference_table_plus_typed_columns():
    if not SHARED_TABLE.exists():
        pytest.skip("the shared reference table is not next to this checkout")
    reference = list(csv.DictReader(SHARED_TABLE.open()))
    assert [{k: row[k] for k in reference[0]} for row in published_table()] == reference


def test_typed_columns_agree_with_the_prose():
    """The typed columns code reads say what the prose columns say."""
    for row in published_table():
        text = row["selection"]
        if row["best_chosen_by"] == "validation":
            assert f"best-validation run of {row['best_of']}" in text
        elif int(row["best_of"]) > 1:
            assert "best of" in text
        else:
            assert "best" not in text
        if row["l2_value"] not in ("", "0"):
            assert row["l2_value"] in row["l2"]
        if row["dropout_rate"] not in ("", "0"):
            assert row["dropout_rate"] in row["dropout"]
        assert row["pixels"] == ("-" if row["id"] == "nielsen_ch1_darkness" else
                                 "k/256" if row["id"].startswith("nielsen") else "k/255")


def test_published_numbers_and_hyperparameters_come_from_the_table():
    for row in published_table():
        recipe = get_recipe(row["id"])
        expected = float(row["published_accuracy_pct"]) if row["published_accuracy_pct"] else None
        assert recipe.published_accuracy == expected
        if recipe.kind != "network":
            continue
        assert recipe.lr == float(row["lr"]) and recipe.momentum == float(row["momentum"])
        assert (recipe.batch_size, recipe.epochs) == (int(row["mini_batch"]), int(row["epochs"]))
        assert recipe.arch.activation == row["activation"]
        # the structure written in Python agrees with the table's words
        for width in recipe.arch.hidden:
            assert str(width) in row["network"]
        if recipe.arch.dropout:
            assert str(recipe.arch.dropout) in row["dropout"]
        # the training set the recipe builds has the published number of images
        split_size = 50_000 if recipe.protocol.split == "nielsen" else 60_000
        images = (recipe.train_subset or split_size) * (5 if recipe.expand else 1)
        assert images == int(row["train_images"]), recipe.id


@pytest.mark.parametrize("recipe_id,n_train,weight_decay", [
    ("nielsen_ch3_overfit_1000_l2", 1_000, 0.1 / 1_000),  # network2: lambda / n
    ("nielsen_ch3_fc30_ce_l2", 50_000, 5.0 / 50_000),
    ("nielsen_ch6_dbl_conv_relu", 50_000, 0.1 / 5_000),  # network3: lambda / num_training_batches
    ("nielsen_ch6_expanded", 250_000, 0.1 / 25_000),
    ("seed_relu_wd01", 60_000, 0.1),  # torch weight_decay as written
    ("seed_relu", 60_000, 5e-5),
    ("nielsen_ch6_dropout", 250_000, 0.0),
])
def test_l2_becomes_the_right_weight_decay(recipe_id, n_train, weight_decay):
    assert get_recipe(recipe_id).weight_decay(n_train) == pytest.approx(weight_decay)


def test_protocols_follow_protocols_md():
    ch6 = get_recipe("nielsen_ch6_basic_conv")
    assert (ch6.protocol.split, ch6.protocol.shuffle, ch6.init, ch6.protocol.decay) == (
        "nielsen", False, "network3", "weights")
    assert ch6.selection == "best_validation"
    assert get_recipe("nielsen_ch1_fc30").protocol.shuffle and get_recipe("nielsen_ch1_fc30").init == "network"
    assert get_recipe("nielsen_ch3_fc30_ce").init == "network"  # "(N(0;1) init)"
    assert get_recipe("nielsen_ch3_fc100_ce_l2_60ep").init == "network2"
    assert get_recipe("nielsen_ch3_fc100_ce_l2").selection_split == "validation"
    seed = get_recipe("seed_relu")
    assert (seed.protocol.split, seed.scaling, seed.init, seed.protocol.decay, seed.selection) == (
        "official", "k/255", "pytorch", "all", "final")
    assert get_recipe("seed_relu_wd01_normalized").scaling == "normalized"
    assert get_recipe("nielsen_ch6_basic_conv").scaling == "k/256"
    # how each published number was chosen
    assert (ch6.best_of, ch6.best_chosen_by) == (3, "validation")
    assert (get_recipe("nielsen_ch6_dropout").best_of, get_recipe("nielsen_ch1_fc100").best_of) == (5, 3)
    assert get_recipe("nielsen_ch1_fc100").best_chosen_by == "test"  # no validation set in ch. 1
    assert get_recipe("nielsen_ch6_dropout").dropout_masks == "shared"
    assert get_recipe("nielsen_ch6_dropout_independent_masks").dropout_masks == "independent"
    wide = get_recipe("tutorial_cnn_wide")
    assert (wide.test_mode, wide.printed_as) == ("train", "truncated")
    assert get_recipe("nielsen_ch3_fc100_ce_l2_60ep_large_init").init == "network"
    assert get_recipe("tutorial_cnn_nll").published_accuracy is None
    assert get_recipe("nielsen_ch6_ensemble").members == "nielsen_ch6_dropout"


def test_unknown_recipe_lists_the_valid_ones():
    with pytest.raises(UnknownRecipe) as err:
        get_recipe("nielsen_ch6_nope")
    assert "nielsen_ch6_basic_conv" in str(err.value) and "seed_final" in str(err.value)


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("recipe_id", list(all_recipes()))
def test_every_recipe_card_names_protocol_and_outputs(recipe_id):
    from mnistbench.card import card

    fields = dict(card(recipe_id))
    assert {"published", "network", "studies", "run records", "tables", "report"} <= set(fields)
    recipe = get_recipe(recipe_id)
    if recipe.kind == "network":
        assert {"split", "pixels", "initialisation", "cost", "L2 regularisation", "data order",
                "selection rule", "dropout masks", "test-time mode", "published number"} <= set(fields)
        from mnistbench.data import PIXEL_SCALINGS

        assert fields["pixels"] == PIXEL_SCALINGS[recipe.scaling] and f"lr {recipe.lr:g}" in fields["optimiser"]
    assert recipe_id in fields["run records"]


def test_generated_docs_are_up_to_date():
    """docs/recipes.md and the wording block of docs/protocols.md are `mnistbench docs` output."""
    import yaml

    from mnistbench.card import WORDING_END, WORDING_START, recipes_page, wording_block

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    assert (ROOT / "docs" / "recipes.md").read_text() == recipes_page(config), "run `mnistbench docs --write`"
    protocols = (ROOT / "docs" / "protocols.md").read_text()
    assert protocols.split(WORDING_START, 1)[1].split(WORDING_END, 1)[0].strip() == wording_block()


def test_the_darkness_baseline_runs(data_dir):
    """The darkness row's pixels are "-" in the table (its guesses do not depend on the scaling);
    the recipe must still load data: "-" once reached make_splits and stopped the baseline."""
    from mnistbench.baselines import run_baseline
    record = run_baseline(get_recipe("nielsen_ch1_darkness"), seed=1, data_dir=data_dir)
    assert record["status"] == "finished" and len(record["test_predictions"]) == 10_000
