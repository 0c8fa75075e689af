"""The report's figures (seaborn on matplotlib's Agg backend), each saved as PNG and SVG.

Every function takes tidy tables (the study's runs.csv rows, the report's summary rows, the
runs' per-epoch histories) and returns a matplotlib Figure; `save` writes it. The colours are
the colour-blind-safe "colorblind" palette, and no figure relies on colour alone: the published
value is a diamond, means are circles with error bars, seeds are small dots.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: figures are files

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

PALETTE = sns.color_palette("colorblind")
SEED_COLOR, MEAN_COLOR, PUBLISHED_COLOR, BAND_COLOR = PALETTE[0], "black", PALETTE[3], PALETTE[2]
SPLIT_COLORS = {"validation": PALETTE[0], "test": PALETTE[2]}
SPLIT_DASHES = {"validation": (4, 2), "test": ""}
PNG_DPI = 144
SVG_METADATA = {"Date": None}  # no timestamp inside the SVG: the same runs give the same file


def theme() -> None:
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.1,
                  rc={"svg.hashsalt": "mnistbench", "figure.autolayout": False})


def save(fig, stem: Path) -> list[Path]:
    """stem.png and stem.svg; returns both paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    fig.savefig(paths[0], dpi=PNG_DPI, bbox_inches="tight", metadata={"Software": None})
    fig.savefig(paths[1], bbox_inches="tight", metadata=SVG_METADATA)
    plt.close(fig)
    return paths


def _padded_limits(values: list[float], minimum_span: float = 0.2) -> tuple[float, float]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    low, high = min(values), max(values)
    span = max(high - low, minimum_span)
    return low - 0.08 * span, high + 0.08 * span


def published_vs_replicated(rows: list[dict], runs: pd.DataFrame):
    """One panel per published number, each with its own accuracy axis (the numbers range from
    22% to 99.7%): every seed a dot, the mean with its 95% confidence interval, the 95%
    prediction interval the verdict uses as a band, the published value as a diamond."""
    theme()
    fig, axes = plt.subplots(len(rows), 1, figsize=(8.5, 0.62 * len(rows) + 1.3), squeeze=False)
    for ax, row in zip(axes[:, 0], rows):
        seeds = runs.loc[runs.index.isin(row["run_index"]) & (runs["status"] == "finished"),
                         "selected_accuracy"].dropna()
        published = row["published"]
        if math.isfinite(row["pi_low"]):
            ax.axvspan(row["pi_low"], row["pi_high"], color=BAND_COLOR, alpha=0.22, lw=0)
        jitter = np.linspace(-0.18, 0.18, len(seeds)) if len(seeds) > 1 else np.zeros(len(seeds))
        ax.scatter(seeds, jitter, s=16, color=SEED_COLOR, alpha=0.85, zorder=3, lw=0)
        if math.isfinite(row["mean"]):
            ci = [[row["mean"] - row["ci_low"]], [row["ci_high"] - row["mean"]]] \
                if math.isfinite(row["ci_low"]) else None
            ax.errorbar([row["mean"]], [0], xerr=ci, fmt="o", color=MEAN_COLOR, ms=5, capsize=3,
                        lw=1.2, zorder=4)
        if published is not None:
            ax.scatter([published], [0], marker="D", s=46, color=PUBLISHED_COLOR,
                       edgecolor="white", lw=0.8, zorder=5)
        limits = [*seeds, published, *(row[k] for k in ("mean", "pi_low", "pi_high", "ci_low", "ci_high"))]
        if any(v is not None and math.isfinite(v) for v in limits):
            ax.set_xlim(*_padded_limits(limits))
        ax.set_ylim(-0.5, 0.5)
        ax.set_yticks([])
        ax.grid(axis="y", visible=False)
        ax.tick_params(axis="x", labelsize=8, pad=1)
        ax.set_ylabel(row["recipe"], rotation=0, ha="right", va="center", fontsize=9)
        best_of = row["k"] > 1 and math.isfinite(row["pi_low"])  # judged as the best of k runs
        label = row["verdict"] + (f"\n(best of {row['k']})" if best_of else "")
        ax.text(1.01, 0.5, label, transform=ax.transAxes, va="center", fontsize=8.5)
    handles = [
        plt.Line2D([], [], marker="o", ls="", color=SEED_COLOR, ms=4, label="one seed"),
        plt.Line2D([], [], marker="o", color=MEAN_COLOR, ms=5, label="mean, 95% CI"),
        matplotlib.patches.Patch(color=BAND_COLOR, alpha=0.3, label="95% prediction interval"),
        plt.Line2D([], [], marker="D", ls="", color=PUBLISHED_COLOR, ms=6, label="published"),
    ]
    fig.legend(handles=handles, loc="upper center", ncol=4, frameon=False, fontsize=9,
               bbox_to_anchor=(0.5, 1.0))
    height = fig.get_figheight()
    fig.supxlabel("accuracy (%), each row on its own scale", fontsize=10, y=0.05 / height, va="bottom")
    fig.subplots_adjust(hspace=0.9, top=1 - 0.5 / height, bottom=0.62 / height)
    return fig


def learning_curves(history: pd.DataFrame, title: str, published: float | None, split: str = "test"):
    """Validation and test accuracy per epoch: the mean over seeds with a +-1 sd band, and the
    published accuracy (of the `split` the source reported) as a dashed line."""
    theme()
    fig, ax = plt.subplots(figsize=(5.2, 3.3))
    if history.empty:
        ax.text(0.5, 0.5, "no finished epoch (every run diverged)", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
    else:
        epochs = sorted(history["epoch"].unique())
        few = len(epochs) == 1
        sns.lineplot(data=history, x="epoch", y="accuracy", hue="split", style="split",
                     palette=SPLIT_COLORS, markers=len(epochs) <= 12, dashes=SPLIT_DASHES,
                     errorbar="sd", err_style="bars" if few else "band", ax=ax)
        if published is not None:
            label = f"published {published:g}%" + ("" if split == "test" else f" ({split})")
            ax.axhline(published, color=PUBLISHED_COLOR, ls="--", lw=1.2, label=label)
        ax.legend(title=None, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy (%)")
        if few:  # one epoch: a single tick, not a zoomed axis around it
            ax.set_xticks(epochs)
            ax.set_xlim(epochs[0] - 0.5, epochs[0] + 0.5)
        else:
            ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def lr_sensitivity(runs: pd.DataFrame, summary: pd.DataFrame, judged: dict[str, dict]):
    """Selected accuracy against learning rate (log axis), one panel per recipe with several
    learning rates: seeds as dots (failed runs as crosses), the mean of the runs that learned
    with its 95% CI, the published lr as a dashed line and the published accuracy as a diamond
    on it."""
    theme()
    learning_rates = summary.groupby("recipe", sort=False)["lr"].nunique()
    recipes = list(learning_rates[learning_rates > 1].index)
    cols = min(3, len(recipes))
    rows = math.ceil(len(recipes) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False)
    for ax, recipe in zip(axes.flat, recipes):
        done = runs[(runs["recipe"] == recipe) & (runs["status"] == "finished")]
        failed = done["failed"].astype(bool)
        ax.scatter(done.loc[~failed, "lr"], done.loc[~failed, "selected_accuracy"], s=14,
                   color=SEED_COLOR, alpha=0.7, lw=0)
        # a failed run is a finding of its own, not part of the mean (summary.csv)
        ax.scatter(done.loc[failed, "lr"], done.loc[failed, "selected_accuracy"], s=18,
                   marker="x", color="dimgray", lw=1)
        means = summary[summary["recipe"] == recipe].sort_values("lr")
        ax.errorbar(means["lr"], means["mean"], yerr=[means["mean"] - means["ci95_low"],
                                                      means["ci95_high"] - means["mean"]],
                    fmt="o-", color=MEAN_COLOR, ms=4, capsize=3, lw=1)
        published_lr = means["published_lr"].iloc[0]
        if pd.notna(published_lr):
            ax.axvline(published_lr, color=PUBLISHED_COLOR, ls="--", lw=1)
        published = judged[recipe]["published"]
        if published is not None and pd.notna(published_lr):
            ax.scatter([published_lr], [published], marker="D", s=40, color=PUBLISHED_COLOR,
                       edgecolor="white", zorder=5)
        ax.set_xscale("log")
        ax.set_xticks(means["lr"], [f"{v:g}" for v in means["lr"]])
        ax.minorticks_off()
        ax.set_title(recipe, fontsize=9)
        ax.set_xlabel("learning rate")
        ax.set_ylabel("accuracy (%)")
    for ax in axes.flat[len(recipes):]:
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def wrap_id(recipe: str, width: int = 13) -> str:
    """A recipe id on lines of about `width` characters, broken after underscores."""
    lines = [""]
    for part in recipe.split("_"):
        piece = part if not lines[-1] else f"_{part}"
        if lines[-1] and len(lines[-1]) + len(piece) > width:
            lines[-1] += "_"
            lines.append(part)
        else:
            lines[-1] += piece
    return "\n".join(lines)


def protocol_comparison(runs: pd.DataFrame, groups: list[dict], judged: dict[str, dict]):
    """One panel per architecture trained under both protocols: each recipe's seeds (at its
    published lr), their mean with 95% CI, and its published value."""
    theme()
    # A panel as wide as its recipes need, each id wrapped at its underscores: long ids side by
    # side overlapped (the page shows the figure about 1,000 px wide).
    widths = [max(2, len(group["recipes"])) for group in groups]
    fig, axes = plt.subplots(1, len(groups), figsize=(1.05 * sum(widths) + 1.5, 4.4), squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    for ax, group, width in zip(axes[0], groups, widths):
        labels = []
        for x, recipe in enumerate(group["recipes"]):
            row = judged[recipe]
            seeds = runs.loc[runs.index.isin(row["run_index"]) & (runs["status"] == "finished"),
                             "selected_accuracy"].dropna()
            jitter = np.linspace(-0.12, 0.12, len(seeds)) if len(seeds) > 1 else np.zeros(len(seeds))
            ax.scatter(x + jitter, seeds, s=16, color=SEED_COLOR, alpha=0.85, lw=0, zorder=3)
            if math.isfinite(row["mean"]):
                ci = [[row["mean"] - row["ci_low"]], [row["ci_high"] - row["mean"]]] \
                    if math.isfinite(row["ci_low"]) else None
                ax.errorbar([x + 0.28], [row["mean"]], yerr=ci, fmt="o", color=MEAN_COLOR, ms=5, capsize=3)
            if row["published"] is not None:
                ax.scatter([x + 0.28], [row["published"]], marker="D", s=46, color=PUBLISHED_COLOR,
                           edgecolor="white", zorder=5)
            labels.append(f"{wrap_id(recipe)}\n({row['protocol']})")
        ax.set_xticks(range(len(labels)), labels, fontsize=7.5)
        ax.set_xlim(-0.5, len(labels) - 0.3)
        # a narrow panel's architecture on two lines, so that neighbouring titles do not touch
        ax.set_title(group["label"] if width > 2 else group["label"].replace(" | ", "\n", 1), fontsize=9)
        ax.set_ylabel("accuracy (%)")
    handles = [
        plt.Line2D([], [], marker="o", ls="", color=SEED_COLOR, ms=4, label="one seed"),
        plt.Line2D([], [], marker="o", color=MEAN_COLOR, ms=5, label="mean, 95% CI"),
        plt.Line2D([], [], marker="D", ls="", color=PUBLISHED_COLOR, ms=6, label="published"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False, fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig
