"""Recipes and claims of your own, defined in a study's config instead of the package.

    recipes:
      dbl_conv_relu_batch64:
        base: nielsen_ch6_dbl_conv_relu          # any shipped network recipe
        description: the book's double-conv ReLU net at mini-batch 64
        batch_size: 64                            # any field of FIELDS, changed
        claim:                                    # optional: the number it tests
          accuracy: 99.1
          source: my course notes, week 6
          epoch: final                            # final | peak | best_validation
          best_of: 1                              # best of k runs, chosen_by validation | test

define() checks every definition (a message naming the recipe and the field) and registers the
recipes (recipes.register), so that the workflow, the trainers and the card see them as they
see the shipped ones. A run's record carries the resolved recipe (recipes.recipe_record), and
learn() registers it again from the record alone: the tables, the report and `mnistbench
audit` need no config. This module imports the recipe registry and nothing that trains,
tracks or reports.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
from pathlib import Path

from .data import PIXEL_SCALINGS, SPLIT_SIZE
from .models import ACTIVATIONS
from .recipes import (COSTS, INIT_TEXT, LOSS_TEXT, PROTOCOLS, Recipe, all_recipes, planned_train_images,
                      recipe_from_record, register, shipped_recipes)

# ids name run folders, MLflow runs and report anchors: a plain lower-case name, nothing else
ID_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,63}")


def _positive_ints(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                           for v in value)


def _number(low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False):
    def check(value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        return (low < value if low_open else low <= value) and (value < high if high_open else value <= high)
    return check


def _integer(low: int):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _one_of(*values):
    return lambda v: v in values


# field: (what the value must be, in words; its check; where it goes: "arch" or the Recipe field)
FIELDS = {
    "convs": ("a list of conv channel counts >= 1 (may be empty)", _positive_ints, "arch"),
    "hidden": ("a list of hidden layer widths >= 1", lambda v: _positive_ints(v) and len(v) > 0, "arch"),
    "activation": (f"one of {', '.join(ACTIVATIONS)}", _one_of(*ACTIVATIONS), "arch"),
    "conv_padding": ("an integer >= 0", _integer(0), "arch"),
    "dropout": ("a probability in [0, 1)", _number(0, 1, high_open=True), "arch"),
    "dropout_style": ("nielsen or inverted", _one_of("nielsen", "inverted"), "arch"),
    "dropout_from": ("an integer >= 0 (the first fc layer whose input drops)", _integer(0), "arch"),
    "channel_dropout": ("a probability in [0, 1)", _number(0, 1, high_open=True), "arch"),
    "hidden_activation": ("true or false", lambda v: isinstance(v, bool), "arch"),
    "protocol": (f"one of {', '.join(PROTOCOLS)}", _one_of(*PROTOCOLS), "protocol"),
    "init": (f"one of {', '.join(INIT_TEXT)}", _one_of(*INIT_TEXT), "init"),
    "pixels": (f"one of {', '.join(PIXEL_SCALINGS)}", _one_of(*PIXEL_SCALINGS), "scaling"),
    "cost": (f"one of {', '.join(dict.fromkeys([*COSTS, *LOSS_TEXT]))}", _one_of(*COSTS, *LOSS_TEXT), "loss"),
    "lr": ("a number > 0", _number(0, low_open=True), "lr"),
    "momentum": ("a number in [0, 1)", _number(0, 1, high_open=True), "momentum"),
    "batch_size": ("an integer >= 1", _integer(1), "batch_size"),
    "epochs": ("an integer >= 1", _integer(1), "epochs"),
    "l2": ("a number >= 0, in the protocol's own units", _number(0), "l2"),
    "expand": ("true or false", lambda v: isinstance(v, bool), "expand"),
    "train_subset": ("an integer >= 1", _integer(1), "train_subset"),
    "selection": ("final, peak or best_validation", _one_of("final", "peak", "best_validation"), "selection"),
    "selection_split": ("test or validation", _one_of("test", "validation"), "selection_split"),
    "test_mode": ("eval or train", _one_of("eval", "train"), "test_mode"),
    "dropout_masks": ("independent or shared", _one_of("independent", "shared"), "dropout_masks"),
}
CLAIM_FIELDS = {
    "accuracy": ("a percentage in (0, 100]", _number(0, 100, low_open=True)),
    "source": ("a text: where the number comes from", lambda v: isinstance(v, str) and v.strip() != ""),
    "epoch": ("final, peak or best_validation: which epoch of a run the number is",
              _one_of("final", "peak", "best_validation")),
    "split": ("test or validation: the split the number is measured on", _one_of("test", "validation")),
    "best_of": ("an integer >= 1: the number is the best of this many runs", _integer(1)),
    "chosen_by": ("validation or test: how the best run was chosen", _one_of("validation", "test")),
    "printed_as": ("rounded or truncated", _one_of("rounded", "truncated")),
}
REQUIRED_CLAIM = ("accuracy", "source", "epoch")
TOP = {"base", "description", "claim"}


class DefinitionError(ValueError):
    """A recipe definition that cannot be used: the message names the recipe and the field."""


def _unknown(recipe_id: str, where: str, name, known) -> DefinitionError:
    close = difflib.get_close_matches(str(name), list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return DefinitionError(f"recipe {recipe_id!r}: {where}{name!r} is not a field{hint}; "
                           f"fields: {', '.join(known)}")


def check_id(recipe_id) -> None:
    if not isinstance(recipe_id, str) or not ID_PATTERN.fullmatch(recipe_id):
        raise DefinitionError(f"recipe id {recipe_id!r} is not a plain name: ids name run folders, "
                              f"MLflow runs and report anchors, so they are a lower-case letter, "
                              f"then up to 63 lower-case letters, digits or underscores")
    if recipe_id in shipped_recipes():
        raise DefinitionError(f"recipe {recipe_id!r}: the id of a shipped recipe (see 'mnistbench "
                              f"recipes'); a recipe of your own needs an id of its own")


def resolve(recipe_id: str, spec) -> Recipe:
    """The recipe one definition describes (not registered); DefinitionError if it cannot be."""
    check_id(recipe_id)
    if not isinstance(spec, dict):
        raise DefinitionError(f"recipe {recipe_id!r}: a definition is a mapping of fields "
                              f"(base, description, claim and changes), not {type(spec).__name__}")
    for name in spec:
        if name not in FIELDS and name not in TOP:
            raise _unknown(recipe_id, "", name, [*TOP, *FIELDS])
    base_id = spec.get("base")
    shipped = shipped_recipes()
    if not isinstance(base_id, str) or base_id not in shipped:
        networks = [r.id for r in shipped.values() if r.kind == "network"]
        close = difflib.get_close_matches(str(base_id), networks, n=1)
        raise DefinitionError(f"recipe {recipe_id!r}: base {base_id!r} is not a shipped recipe"
                              + (f" (did you mean {close[0]!r}?)" if close else "")
                              + "; see 'mnistbench recipes'")
    base = shipped[base_id]
    if base.kind != "network":
        raise DefinitionError(f"recipe {recipe_id!r}: base {base_id!r} is a {base.kind}, not a network; "
                              f"a recipe of your own changes a network recipe")
    if not isinstance(spec.get("description", ""), str):
        raise DefinitionError(f"recipe {recipe_id!r}: description must be a text")
    for name, value in spec.items():
        if name in FIELDS and not FIELDS[name][1](value):
            raise DefinitionError(f"recipe {recipe_id!r}: {name} must be {FIELDS[name][0]}, got {value!r}")
    fields = {k: v for k, v in spec.items() if k in FIELDS}
    arch_changes = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items() if FIELDS[k][2] == "arch"}
    changes = {FIELDS[k][2]: v for k, v in fields.items() if FIELDS[k][2] != "arch"}
    if "protocol" in changes:  # a protocol brings its own initialisation unless init says otherwise
        changes["protocol"] = PROTOCOLS[changes["protocol"]]
        changes.setdefault("init", changes["protocol"].init)
    if "loss" in changes:
        changes["loss"] = COSTS.get(changes["loss"], changes["loss"])
    arch = dataclasses.replace(base.arch, **arch_changes)
    if arch.flat_size() < 1:
        raise DefinitionError(f"recipe {recipe_id!r}: convs {list(arch.convs)} with padding "
                              f"{arch.conv_padding} shrink the 28x28 image to nothing")
    has_dropout = bool(arch.dropout or arch.channel_dropout)
    if "dropout_masks" in changes and not has_dropout:
        raise DefinitionError(f"recipe {recipe_id!r}: dropout_masks needs dropout > 0")
    # network3's shared mask stream belongs to its protocol; elsewhere a stream per run and layer
    protocol = changes.get("protocol", base.protocol)
    changes.setdefault("dropout_masks", "shared" if base.dropout_masks == "shared" and protocol.code == "network3"
                       else "independent")
    if not has_dropout:
        changes["dropout_masks"] = "-"
    if arch.dropout_from > len(arch.hidden):
        raise DefinitionError(f"recipe {recipe_id!r}: dropout_from {arch.dropout_from} is past the "
                              f"{len(arch.hidden)} hidden layer(s)")
    claim = _claim(recipe_id, spec.get("claim"), changes)
    recipe = dataclasses.replace(
        base, id=recipe_id, published_id=recipe_id, variant="", arch=arch, user_defined=True,
        base=base_id, notes=spec.get("description") or f"{base_id}, changed",
        definition=json.dumps(spec, sort_keys=True), **changes, **claim)
    split = recipe.protocol.split
    if recipe.train_subset is not None and recipe.train_subset > SPLIT_SIZE[split]:
        raise DefinitionError(f"recipe {recipe_id!r}: train_subset {recipe.train_subset} is more than "
                              f"the {SPLIT_SIZE[split]:,} training images of the {split} split")
    needs_validation = (recipe.selection == "best_validation" or "validation" in (recipe.selection_split,
                                                                                 recipe.best_chosen_by))
    if split == "official" and needs_validation:
        raise DefinitionError(f"recipe {recipe_id!r}: the {recipe.protocol.code} protocol has no "
                              f"validation set (official split); use a nielsen protocol or the test split")
    return dataclasses.replace(recipe, train_images=planned_train_images(recipe))


def _claim(recipe_id: str, claim, changes: dict) -> dict:
    """The Recipe fields a claim sets; no claim: no published number, one run, as recorded."""
    if claim is None:
        return dict(published_accuracy=None, source="no claim in the config", best_of=1,
                    best_chosen_by="-", printed_as="rounded")
    if not isinstance(claim, dict):
        raise DefinitionError(f"recipe {recipe_id!r}: claim must be a mapping ({', '.join(CLAIM_FIELDS)})")
    for name, value in claim.items():
        if name not in CLAIM_FIELDS:
            raise _unknown(recipe_id, "claim.", name, CLAIM_FIELDS)
        if not CLAIM_FIELDS[name][1](value):
            raise DefinitionError(f"recipe {recipe_id!r}: claim.{name} must be {CLAIM_FIELDS[name][0]}, got {value!r}")
    missing = [name for name in REQUIRED_CLAIM if name not in claim]
    if missing:
        raise DefinitionError(f"recipe {recipe_id!r}: claim needs {', '.join(missing)} "
                              f"({'; '.join(f'{n}: {CLAIM_FIELDS[n][0]}' for n in missing)})")
    best_of = claim.get("best_of", 1)
    if best_of > 1 and "chosen_by" not in claim:
        raise DefinitionError(f"recipe {recipe_id!r}: claim.best_of {best_of} needs claim.chosen_by "
                              f"({CLAIM_FIELDS['chosen_by'][0]})")
    for field, name, default in (("selection", "epoch", None), ("selection_split", "split", "test")):
        stated = claim.get(name, default)
        if field in changes and changes[field] != stated:
            raise DefinitionError(f"recipe {recipe_id!r}: {field} {changes[field]!r} contradicts "
                                  f"claim.{name} {stated!r}; the runs are selected as the claim was")
        changes[field] = stated
    return dict(published_accuracy=float(claim["accuracy"]), source=claim["source"], best_of=best_of,
                best_chosen_by=claim.get("chosen_by", "-") if best_of > 1 else "-",
                printed_as=claim.get("printed_as", "rounded"))


def define(definitions: dict | None) -> list[Recipe]:
    """Check and register the recipes of a config's `recipes:` mapping (id -> definition)."""
    if not definitions:
        return []
    if not isinstance(definitions, dict):
        raise DefinitionError("recipes: a mapping of recipe ids to definitions")
    recipes = [resolve(recipe_id, spec) for recipe_id, spec in definitions.items()]
    try:
        return [register(recipe) for recipe in recipes]
    except ValueError as err:
        raise DefinitionError(str(err)) from None


def define_json(text: str) -> list[Recipe]:
    """define() of a JSON object (how the workflow hands a job its recipe: `--define`)."""
    try:
        value = json.loads(text)
    except ValueError as err:
        raise DefinitionError(f"--define is not valid JSON: {err}") from None
    return define(value)


def define_from_config(path: str | Path) -> list[Recipe]:
    """define() of the `recipes:` of a YAML config file (a study's --configfile)."""
    import yaml

    try:
        config = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise DefinitionError(f"cannot read {path}: {err}") from None
    if not isinstance(config, dict):
        raise DefinitionError(f"{path}: not a config (a mapping with studies and recipes)")
    return define(config.get("recipes"))


def definition_json(recipe_id: str) -> str | None:
    """A registered user recipe's `--define` argument; None for a shipped one."""
    recipe = all_recipes()[recipe_id]
    if not recipe.user_defined:
        return None
    return json.dumps({recipe_id: json.loads(recipe.definition)}, sort_keys=True, separators=(",", ":"))


def learn(record: dict) -> Recipe | None:
    """Register the user-defined recipe a run's record carries (None: a shipped recipe's)."""
    if not record.get("user_recipe"):
        return None
    try:
        return register(recipe_from_record(record["user_recipe"]))
    except (TypeError, KeyError) as err:
        raise DefinitionError(f"recipe {record.get('recipe')!r}: its record's user_recipe is "
                              f"unreadable ({type(err).__name__}: {err})") from None
