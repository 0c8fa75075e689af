"""Recipes: what to train to replicate one published number.

A recipe = architecture + protocol + hyperparameters + the published row it replicates.
The published table (`published_results.csv`, shipped in the package) is the one source of the
published numbers *and* of the hyperparameters printed beside them (activation, cost, learning
rate, momentum, mini-batch, epochs, L2, training images, reported split, selection rule), in
typed columns (pixels, best_of, best_chosen_by, selection_rule, l2_value, dropout_rate,
dropout_masks, test_mode, printed_as) for everything code reads; the prose columns are notes.
This module adds only what the table cannot say: the layer structure and which code's protocol
produced the number, and the named variants that replicate a row under another reading.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

from .data import PIXEL_SCALINGS, SPLIT_SIZE
from .models import Arch


@dataclass(frozen=True)
class Protocol:
    """How a source trained and evaluated: data, order, initialisation, L2, selection."""

    code: str  # the code that produced the number: network, network2, network3, articles, tutorial
    family: str  # "nielsen" or "pytorch"
    split: str  # "nielsen" (50k/10k/10k) or "official" (60k/10k)
    shuffle: bool  # reshuffle the training data every epoch
    drop_last: bool  # network3.py uses size // mini_batch batches; the others keep the remainder
    init: str  # see models.init_weights
    decay: str  # which parameters L2 applies to: "weights" (the book) or "all" (torch weight_decay)
    l2_divisor: str  # weight_decay = l2 / n ("images"), / num_training_batches ("batches"), or l2 ("none")
    shuffle_expanded_once: bool = False  # the book's expanded file is shuffled once, not per epoch

    def describe(self) -> str:
        """The code whose protocol this is; the fields themselves read as protocol_fields says."""
        return {
            "network": "network.py, the book's chapter-1 code",
            "network2": "network2.py, the book's chapter-3 code",
            "network3": "network3.py, the book's chapter-6 (Theano) code",
            "articles": "the PyTorch articles' code (nestedsoftware/pytorch)",
            "tutorial": "the PyTorch tutorials' code",
        }[self.code]


PROTOCOLS = {
    p.code: p
    for p in [
        Protocol("network", "nielsen", "nielsen", True, False, "network", "weights", "images"),
        Protocol("network2", "nielsen", "nielsen", True, False, "network2", "weights", "images"),
        Protocol("network3", "nielsen", "nielsen", False, True, "network3", "weights", "batches",
                 shuffle_expanded_once=True),
        Protocol("articles", "pytorch", "official", True, False, "pytorch", "all", "none"),
        Protocol("tutorial", "pytorch", "official", True, False, "pytorch", "all", "none"),
    ]
}

# The table's cost names -> the loss functions in train.py.
COSTS = {
    "quadratic": "quadratic",  # 0.5 * ||sigmoid(z) - y||^2, mean over the mini-batch
    "cross-entropy": "binary_cross_entropy",  # network2.py: BCE summed over the 10 sigmoid outputs
    "log-likelihood": "cross_entropy",  # network3.py: softmax + mean negative log-likelihood
    "MSELoss on one-hot": "mse",  # nn.MSELoss: also averages over the 10 outputs
    "CrossEntropyLoss": "cross_entropy",
    "NLL on log_softmax": "cross_entropy",  # nll_loss(log_softmax(z)) is cross_entropy(z)
}


@dataclass(frozen=True)
class Recipe:
    id: str
    kind: str  # "network", "ensemble" (vote of trained runs) or "baseline" (no training loop)
    source: str
    published_accuracy: float | None  # percent; None where the source printed none
    published_id: str = ""  # the table row it replicates: its own id, or a variant's base row
    variant: str = ""  # for a variant: how it differs from the published row's reading
    arch: Arch | None = None
    protocol: Protocol | None = None
    init: str | None = None
    scaling: str | None = None  # pixel scaling, one of data.PIXEL_SCALINGS
    loss: str | None = None
    lr: float | None = None
    momentum: float = 0.0
    batch_size: int | None = None
    epochs: int | None = None
    l2: float = 0.0  # in the source's own units: lambda (book) or weight_decay (torch)
    expand: bool = False
    train_subset: int | None = None  # first N images of the split (before expansion)
    train_images: int | None = None  # as published, after expansion
    selection: str | None = None  # "peak", "best_validation" or "final"
    selection_split: str = "test"  # split whose accuracy "peak" maximises
    best_of: int = 1  # the published number is the best of this many runs...
    best_chosen_by: str = "-"  # ...chosen by "validation" or "test" accuracy ("-": one run)
    dropout_masks: str = "-"  # "shared": one mask stream for every run (network3); "independent"
    test_mode: str = "eval"  # "train": tested with dropout active, as the wide tutorial was
    printed_as: str = "rounded"  # "truncated": printed with %d, so "99" means 99.00-99.99
    members: str | None = None  # ensembles: the recipe whose runs vote
    notes: str = ""
    # Recipes a study's config defines (definitions.py): the shipped recipe they change, and
    # the definition as written (JSON), which their records carry.
    user_defined: bool = False
    base: str = ""
    definition: str = ""

    def weight_decay(self, n_train: int) -> float:
        """The torch weight_decay equivalent of this recipe's L2 for n_train training images."""
        divisor = {"images": n_train, "none": 1, "batches": n_train // self.batch_size}
        return self.l2 / divisor[self.protocol.l2_divisor] if self.l2 else 0.0

    def variant_of_base(self) -> str:
        """A user-defined recipe's changes to its base, as its definition states them."""
        changes = {k: v for k, v in json.loads(self.definition or "{}").items()
                   if k not in ("base", "description", "claim")}
        return ", ".join(f"{k} {v}" for k, v in changes.items()) or "no changes"

    def with_overrides(self, **changes) -> "Recipe":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


# The structure the table describes in words, and the protocol that produced each number.
_NIELSEN_CONV = dict(convs=(20, 40))
_STRUCTURE: dict[str, tuple[str, Arch | None, dict]] = {
    "nielsen_ch1_fc30": ("network", Arch(hidden=(30,)), {}),
    "nielsen_ch1_fc100": ("network", Arch(hidden=(100,)), {}),
    # "(N(0;1) init)" in the table: network2's large_weight_initializer.
    "nielsen_ch3_overfit_1000": ("network2", Arch(hidden=(30,)), dict(init="network")),
    "nielsen_ch3_overfit_1000_l2": ("network2", Arch(hidden=(30,)), dict(init="network")),
    "nielsen_ch3_fc30_ce": ("network2", Arch(hidden=(30,)), dict(init="network")),
    "nielsen_ch3_fc30_ce_l2": ("network2", Arch(hidden=(30,)), dict(init="network")),
    "nielsen_ch3_fc100_ce_l2": ("network2", Arch(hidden=(100,)), dict(init="network")),
    "nielsen_ch3_fc100_ce_l2_60ep": ("network2", Arch(hidden=(100,)), {}),
    "nielsen_ch6_fc100": ("network3", Arch(hidden=(100,)), {}),
    "nielsen_ch6_basic_conv": ("network3", Arch(convs=(20,), hidden=(100,)), {}),
    "nielsen_ch6_dbl_conv": ("network3", Arch(**_NIELSEN_CONV, hidden=(100,)), {}),
    "nielsen_ch6_dbl_conv_relu": ("network3", Arch(**_NIELSEN_CONV, hidden=(100,)), {}),
    "nielsen_ch6_expanded": ("network3", Arch(**_NIELSEN_CONV, hidden=(100,)), {}),
    "nielsen_ch6_expanded_fc300": ("network3", Arch(**_NIELSEN_CONV, hidden=(300,)), {}),
    "nielsen_ch6_expanded_fc1000": ("network3", Arch(**_NIELSEN_CONV, hidden=(1000,)), {}),
    "nielsen_ch6_double_fc100": ("network3", Arch(**_NIELSEN_CONV, hidden=(100, 100)), {}),
    "nielsen_ch6_double_fc300": ("network3", Arch(**_NIELSEN_CONV, hidden=(300, 300)), {}),
    "nielsen_ch6_double_fc1000": ("network3", Arch(**_NIELSEN_CONV, hidden=(1000, 1000)), {}),
    # network3's dropout: on the inputs of fc1, fc2 and the softmax layer, no rescaling in training.
    "nielsen_ch6_dropout": ("network3", Arch(**_NIELSEN_CONV, hidden=(1000, 1000), dropout=0.5), {}),
    "seed_dense_mse": ("articles", Arch(hidden=(100,)), {}),
    "seed_simple_conv": ("articles", Arch(convs=(20,), hidden=(100,)), {}),
    "seed_2conv": ("articles", Arch(**_NIELSEN_CONV, hidden=(100,)), {}),
    "seed_relu_wd01": ("articles", Arch(**_NIELSEN_CONV, hidden=(100,)), {}),
    "seed_relu": ("articles", Arch(**_NIELSEN_CONV, hidden=(100,)), {}),
    "seed_relu_extended": ("articles", Arch(**_NIELSEN_CONV, hidden=(100,)), {}),
    "seed_final": ("articles", Arch(**_NIELSEN_CONV, hidden=(1000, 1000), dropout=0.5,
                                    dropout_style="inverted"), {}),
    "seed_final_lr005": ("articles", Arch(**_NIELSEN_CONV, hidden=(1000, 1000), dropout=0.5,
                                          dropout_style="inverted"), {}),
    # Dropout2d(0.25) after the conv blocks; fc1 -> fc2 with no activation between.
    "tutorial_cnn_nll": ("tutorial", Arch(convs=(10, 20), hidden=(100,), channel_dropout=0.25,
                                          hidden_activation=False), {}),
    # padding 2 keeps 28x28 -> 14 -> 7; dropout after fc1 and fc2 (on the inputs of fc2, fc3).
    "tutorial_cnn_wide": ("tutorial", Arch(convs=(150, 64), conv_padding=2, hidden=(1024, 500),
                                           dropout=0.5, dropout_style="inverted", dropout_from=1), {}),
}
_ENSEMBLES = {"nielsen_ch6_ensemble": "nielsen_ch6_dropout"}
# The rows that train no network: baselines.BASELINES runs them (the same ids).
BASELINE_IDS = ("nielsen_ch1_darkness", "nielsen_ch1_svm")
# What an ensemble row votes (ensemble.py votes it; the card and the study's groups read it here).
ENSEMBLE_SIZE = 5  # the book votes five nets
# the book's tie rule: mnistbench.ensemble (TIE_RULES, python2_dict_order) says why
ENSEMBLE_VOTE_RULE = ("plurality of the members' final-epoch test predictions; ties go to the first "
                      "tied digit in CPython 2.7's dict order (the book's Counter(p).most_common(1) "
                      "over the nets in training order)")

# Named variants: a published row trained under another reading of its source. Each replicates
# the same published number and is reported beside the faithful recipe, never instead of it.
VARIANTS: dict[str, tuple[str, str, dict]] = {
    # The articles' repository normalised its inputs only after the articles were published.
    "seed_relu_wd01_normalized": ("seed_relu_wd01", "pixels normalised (ToTensor, then mean/sd), "
                                  "as the articles' repository does since 2019-09-15",
                                  dict(scaling="normalized")),
    # network3's constant-seeded masks vs a mask stream per run and per layer.
    "nielsen_ch6_dropout_independent_masks": (
        "nielsen_ch6_dropout", "independent dropout masks per run and per layer (network3 shares "
        "one stream among all runs)", dict(dropout_masks="independent")),
    "nielsen_ch6_ensemble_independent_masks": (
        "nielsen_ch6_ensemble", "a vote of nielsen_ch6_dropout_independent_masks runs",
        dict(members="nielsen_ch6_dropout_independent_masks", dropout_masks="independent")),
    # The book's 60-epoch run continues an interpreter session that had called
    # large_weight_initializer(); the default initialiser is introduced later in chapter 3.
    "nielsen_ch3_fc100_ce_l2_60ep_large_init": (
        "nielsen_ch3_fc100_ce_l2_60ep", "weights N(0, 1) (large_weight_initializer), the session "
        "the book's text continues", dict(init="network")),
    # mnist.pkl.gz stores k/256; torchvision's ToTensor (and mnistbench before the fidelity
    # fixes) k/255: this measures what the 0.4% larger inputs change.
    "nielsen_ch1_fc30_k255": ("nielsen_ch1_fc30", "pixels k/255 (torchvision's ToTensor) instead "
                              "of the book's k/256", dict(scaling="k/255")),
}


def published_table() -> list[dict[str, str]]:
    """The rows of published_results.csv, as strings."""
    text = resources.files("mnistbench").joinpath("published_results.csv").read_text()
    return list(csv.DictReader(text.splitlines()))


def _recipe(row: dict[str, str]) -> Recipe:
    common = dict(id=row["id"], published_id=row["id"], source=row["source"],
                  published_accuracy=float(row["published_accuracy_pct"]) if row["published_accuracy_pct"] else None,
                  printed_as=row["printed_as"], best_of=int(row["best_of"]),
                  best_chosen_by=row["best_chosen_by"])
    if row["id"] in BASELINE_IDS:
        # The darkness baseline ("-" in the table) compares sums of pixels, which any scaling
        # leaves in the same order: it reads the book's data, as mnist_average_darkness.py does.
        return Recipe(kind="baseline", selection="final", notes=row["network"],
                      scaling="k/256" if row["pixels"] == "-" else row["pixels"], **common)
    if row["id"] in _ENSEMBLES:
        return Recipe(kind="ensemble", members=_ENSEMBLES[row["id"]], selection="final",
                      dropout_masks=row["dropout_masks"], notes=row["network"], **common)
    code, arch, extra = _STRUCTURE[row["id"]]
    protocol = PROTOCOLS[code]
    arch = dataclasses.replace(arch, activation=row["activation"])
    train_images = int(row["train_images"])
    expand = train_images > SPLIT_SIZE[protocol.split]
    base_images = train_images // 5 if expand else train_images
    return Recipe(
        kind="network", arch=arch, protocol=protocol, init=extra.get("init", protocol.init),
        scaling=row["pixels"], loss=COSTS[row["cost"]],
        lr=float(row["lr"]), momentum=float(row["momentum"]), batch_size=int(row["mini_batch"]),
        epochs=int(row["epochs"]), l2=float(row["l2_value"]), expand=expand,
        train_subset=base_images if base_images < SPLIT_SIZE[protocol.split] else None,
        train_images=train_images, selection=row["selection_rule"],
        selection_split=row["reported_split"], dropout_masks=row["dropout_masks"],
        test_mode=row["test_mode"], notes=row["network"], **common)


@cache
def shipped_recipes() -> dict[str, Recipe]:
    """The recipes of the package, keyed by id: one per published row (its id is the row's),
    then the named variants (their published_id is the row they replicate)."""
    recipes = {row["id"]: _recipe(row) for row in published_table()}
    for variant_id, (base, description, changes) in VARIANTS.items():
        recipes[variant_id] = dataclasses.replace(recipes[base], id=variant_id, variant=description,
                                                  **changes)
    return recipes


# The way in from outside: recipes defined in a study's config (definitions.define) or read
# back from a run's record (definitions.learn), registered for this process.
_REGISTERED: dict[str, Recipe] = {}


def all_recipes() -> dict[str, Recipe]:
    """Every recipe, keyed by its id: the shipped ones, then those registered in this process."""
    return {**shipped_recipes(), **_REGISTERED}


def register(recipe: Recipe) -> Recipe:
    """Add a user-defined recipe to this process's registry (the same one again is a no-op)."""
    if recipe.id in shipped_recipes():
        raise ValueError(f"recipe {recipe.id!r}: the id of a shipped recipe; choose another id")
    known = _REGISTERED.get(recipe.id)
    if known is not None and known != recipe:
        raise ValueError(f"recipe {recipe.id!r} is defined twice, differently (its definitions: "
                         f"{known.definition} and {recipe.definition})")
    _REGISTERED[recipe.id] = recipe
    return recipe


def recipe_record(recipe: Recipe) -> dict | None:
    """What a run's metrics.json carries of a user-defined recipe ("user_recipe"): the
    definition as written and the recipe it resolved to, before the run's own overrides (lr,
    epochs, subset: its config records those), so that an audit needs no config. None for a
    shipped recipe, whose record stays as it was."""
    if not recipe.user_defined:
        return None
    defined = _REGISTERED.get(recipe.id, recipe)
    resolved = dataclasses.asdict(defined)
    definition = json.loads(resolved.pop("definition") or "{}")
    return {"definition": definition, "resolved": resolved}


def recipe_from_record(user_recipe: dict) -> Recipe:
    """The recipe a record's "user_recipe" resolved to (recipe_record's inverse)."""
    resolved = dict(user_recipe["resolved"])
    arch = {k: tuple(v) if isinstance(v, list) else v for k, v in resolved.pop("arch").items()}
    protocol = resolved.pop("protocol")
    return Recipe(**resolved, arch=Arch(**arch), protocol=Protocol(**protocol),
                  definition=json.dumps(user_recipe.get("definition") or {}, sort_keys=True))


class UnknownRecipe(KeyError):
    def __str__(self) -> str:
        return f"unknown recipe {self.args[0]!r}; valid recipes: {', '.join(all_recipes())}"


def get_recipe(recipe_id: str) -> Recipe:
    try:
        return all_recipes()[recipe_id]
    except KeyError:
        raise UnknownRecipe(recipe_id) from None


# --- the protocol in words: the one wording of each field, rendered into the recipe card
# (`mnistbench recipes ID`, docs/recipes.md), the report and docs/protocols.md --------------

SPLIT_TEXT = {
    "nielsen": "first 50,000 training images train, the last 10,000 validate, official 10,000 test",
    "official": "all 60,000 training images train, official 10,000 test, no validation",
}
ORDER_TEXT = {True: "reshuffled every epoch", False: "never shuffled: mini-batch i is always the same images"}
INIT_TEXT = {  # models.init_weights
    "network": "every weight and bias N(0, 1)",
    "network2": "weights N(0, 1/sqrt(n_in)), biases N(0, 1)",
    "network3": "conv weights N(0, sqrt(1/(filters*25/4))), fc weights N(0, sqrt(1/n_out)), biases "
                "N(0, 1), softmax layer zeros",
    "pytorch": "PyTorch's default initialisation",
}
LOSS_TEXT = {  # train.LOSSES
    "quadratic": "0.5 ||sigmoid(z) - y||^2 per image, mean over the mini-batch",
    "mse": "nn.MSELoss on sigmoid outputs (also averages over the 10 outputs)",
    "binary_cross_entropy": "binary cross-entropy summed over the 10 sigmoid outputs, mean over the mini-batch",
    "cross_entropy": "softmax + mean negative log-likelihood",
}
L2_TEXT = {  # Protocol.l2_divisor
    "images": "lambda / n (n = training images), on weights only",
    "batches": "lambda / number of mini-batches per epoch, on weights only",
    "none": "PyTorch weight_decay as given, on weights and biases",
}
SELECTION_TEXT = {  # train.select
    "peak": "the highest accuracy over all epochs on the {split} set",
    "best_validation": "the test accuracy of the last epoch whose validation accuracy was the best so "
                       "far (network3.py)",
    "final": "the test accuracy after the last epoch",
}
MASKS_TEXT = {  # models.seed_dropout
    "-": "no dropout",
    "shared": "one mask stream for every run, equal masks for equal-width layers (network3.py's "
              "constant-seeded Theano streams)",
    "independent": "a mask stream per run and per layer",
}
TEST_MODE_TEXT = {  # train.predict
    "eval": "dropout off (eval mode)",
    "train": "dropout active, as published (the notebook never calls net.eval()); the eval-mode "
             "accuracy is recorded beside it",
}
FIELD_WORDING = {"split": SPLIT_TEXT, "pixels": PIXEL_SCALINGS, "initialisation": INIT_TEXT,
                 "cost": LOSS_TEXT, "L2 regularisation": L2_TEXT, "data order": ORDER_TEXT,
                 "selection rule": SELECTION_TEXT, "dropout masks": MASKS_TEXT,
                 "test-time mode": TEST_MODE_TEXT}


def published_selection_text(recipe: Recipe) -> str:
    """How the source selected its published number, in words (the table's typed columns)."""
    epoch = {"peak": "the peak epoch of", "best_validation": "the best-validation epoch of",
             "final": "the final epoch of"}.get(recipe.selection, "")
    if recipe.kind == "ensemble":
        return "plurality vote of five final-epoch nets"
    if recipe.best_of == 1:
        return f"{epoch} a single run".strip()
    by = {"validation": "the run with the best validation accuracy",
          "test": "the run with the best reported (test) accuracy"}[recipe.best_chosen_by]
    return f"{epoch} {by} among {recipe.best_of} runs".strip()


def planned_train_images(recipe: Recipe) -> int:
    """The training images the recipe's data holds: its split or subset, 5x if expanded."""
    return (recipe.train_subset or SPLIT_SIZE[recipe.protocol.split]) * (5 if recipe.expand else 1)


def method_text(recipe: Recipe) -> str:
    """The recipe's network in words (its published row's). An ensemble names its own members:
    a variant that votes other nets keeps the row's words, which name the row's members."""
    if recipe.kind == "ensemble":
        return f"{ENSEMBLE_SIZE} x {recipe.members}; plurality vote"
    return recipe.notes


def protocol_fields(recipe: Recipe, weight_decays: list[float] | None = None) -> list[tuple[str, str]]:
    """The recipe's protocol, field by field, in words. weight_decays: what runs resolved the L2
    to (a study that trains on fewer images changes it); default: the published data's."""
    if recipe.kind == "baseline":
        return [("method", recipe.notes), ("split", SPLIT_TEXT["nielsen"]),
                ("pixels", PIXEL_SCALINGS.get(recipe.scaling, "not used")),
                ("published number", "deterministic: one run")]
    if recipe.kind == "ensemble":
        members = all_recipes()[recipe.members]
        return [("method", method_text(recipe)), ("vote", f"{ENSEMBLE_SIZE} nets: {ENSEMBLE_VOTE_RULE}"),
                ("members", f"{members.id}: {members.protocol.describe()}"),
                ("dropout masks", MASKS_TEXT[members.dropout_masks])] + (
                    [("variant", recipe.variant)] if recipe.variant else [])
    protocol = recipe.protocol
    weight_decays = weight_decays or [recipe.weight_decay(planned_train_images(recipe))]
    l2 = (f"lambda = {recipe.l2:g}; {L2_TEXT[protocol.l2_divisor]} = weight_decay "
          f"{', '.join(f'{w:.3g}' for w in weight_decays)}" if recipe.l2 else "none")
    split = SPLIT_TEXT[protocol.split]
    if recipe.train_subset:
        split += f"; only the first {recipe.train_subset:,} training images"
    if recipe.expand:
        split += f"; expanded 5x by 1-pixel shifts to {recipe.train_images:,} images"
    return [
        ("protocol", f"{protocol.family} ({protocol.describe()})"),
        ("split", split),
        ("pixels", PIXEL_SCALINGS[recipe.scaling]),
        ("initialisation", INIT_TEXT[recipe.init]),
        ("cost", LOSS_TEXT[recipe.loss]),
        ("L2 regularisation", l2),
        ("data order", ORDER_TEXT[protocol.shuffle]),
        ("optimiser", f"SGD, lr {recipe.lr:g}, momentum {recipe.momentum:g}, mini-batch "
                      f"{recipe.batch_size}, {recipe.epochs} epochs"),
        ("selection rule", SELECTION_TEXT[recipe.selection].format(split=recipe.selection_split)),
        ("dropout masks", MASKS_TEXT[recipe.dropout_masks]),
        ("test-time mode", TEST_MODE_TEXT[recipe.test_mode]),
        ("published number", published_selection_text(recipe) if recipe.published_accuracy is not None
         or not recipe.user_defined else "none: the config states no claim"),
    ] + ([("variant", recipe.variant)] if recipe.variant else []) + (
        [("user-defined", f"in the study's config: {recipe.base} with {recipe.variant_of_base()}")]
        if recipe.user_defined else [])


def network_text(arch: Arch) -> str:
    """A network's layers in the published table's words: "conv20+pool | fc100 | out10"."""
    layers = [f"conv{c}+pool" for c in arch.convs] + [f"fc{h}" for h in arch.hidden] + ["out10"]
    dropout = f", dropout {arch.dropout:g} ({arch.dropout_style})" if arch.dropout else ""
    return " | ".join(layers) + dropout


def published_row(recipe: Recipe) -> dict[str, str]:
    """The published table's row a recipe replicates; for a user-defined recipe its claim, in
    the table's columns (no claim: no published number, as tutorial_cnn_nll)."""
    if not recipe.user_defined:
        return {row["id"]: row for row in published_table()}[recipe.published_id]
    claim = json.loads(recipe.definition or "{}").get("claim") or {}
    arch = recipe.arch
    return {
        "id": recipe.id, "source": recipe.source, "network": network_text(arch),
        "chapter_or_section": f"user-defined in the study's config (base {recipe.base})",
        "activation": arch.activation, "cost": recipe.loss, "lr": f"{recipe.lr:g}",
        "momentum": f"{recipe.momentum:g}", "mini_batch": str(recipe.batch_size),
        "epochs": str(recipe.epochs), "l2": f"{recipe.l2:g}", "dropout": f"{arch.dropout:g}",
        "train_images": str(recipe.train_images), "reported_split": recipe.selection_split,
        "selection": published_selection_text(recipe) if claim else "",
        "published_accuracy_pct": str(claim.get("accuracy", "")), "pixels": recipe.scaling,
        "best_of": str(recipe.best_of), "best_chosen_by": recipe.best_chosen_by,
        "selection_rule": recipe.selection, "l2_value": f"{recipe.l2:g}",
        "dropout_rate": f"{arch.dropout:g}", "dropout_masks": recipe.dropout_masks,
        "test_mode": recipe.test_mode, "printed_as": recipe.printed_as,
    }
