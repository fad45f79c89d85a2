"""The report's figures: each builder draws one figure and returns it as a ``data:image/png;base64`` URI.

Figures are built with ``matplotlib.figure.Figure`` (not pyplot) and the Agg renderer, so drawing never
switches the process-wide backend (a notebook user's inline backend stays) and no figure outlives the call.
Labels come from user data: every figure text goes through :func:`mpl_text` (a ``$`` would otherwise start
matplotlib mathtext). The page draws them inside ``matplotlib.rc_context(STYLE)``.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any

from sft.report.htmlparts import is_num, num

DPI = 100
# Fixed, small figure style: the page looks the same whatever the user's matplotlibrc says.
STYLE = {"font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "legend.fontsize": 7,
         "xtick.labelsize": 7, "ytick.labelsize": 7, "text.usetex": False, "figure.dpi": DPI,
         "savefig.dpi": DPI, "axes.spines.top": False, "axes.spines.right": False}


# ---------------------------------------------------------------------------------------------- helpers


def mpl_text(value: Any) -> str:
    """User text for matplotlib: ``$`` escaped so it is never read as mathtext."""
    return str(value).replace("$", r"\$")


def figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def png_uri(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    fig.clear()  # Figure objects are not tracked by pyplot: clearing drops the artists right away
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def label_colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20" if n <= 20 else "viridis"]
    if n <= 20:
        return [cmap(i) for i in range(n)]
    return [cmap(i / max(n - 1, 1)) for i in range(n)]


def _floats(values: Any) -> list[float]:
    return [math.nan if v is None else float(v) for v in (values or [])]


# ---------------------------------------------------------------------------------------------- performance


def confusion_figure(matrix: list[list[int]], labels: list[str]) -> str:
    import numpy as np

    counts = np.asarray(matrix, dtype=float)
    n = counts.shape[0]
    labels = labels if len(labels) == n else [str(i) for i in range(n)]
    row_sums = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, row_sums, out=np.zeros_like(counts), where=row_sums > 0)
    size = min(6.0, 3.0 + 0.35 * n)
    fig = figure(size + 0.8, size)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of the true class", shrink=0.8)
    if n <= 30:
        ticks = [mpl_text(label) for label in labels]
        slanted = max(map(len, ticks), default=0) > 4
        ax.set_xticks(range(n), ticks, rotation=45 if slanted else 0, ha="right" if slanted else "center")
        ax.set_yticks(range(n), ticks)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=8 if n <= 10 else 6,
                        color="white" if share[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("Confusion matrix")
    return png_uri(fig)


# ---------------------------------------------------------------------------------------------- calibration


def reliability_figure(panels: list[tuple[str, dict[str, Any]]]) -> str:
    fig = figure(3.6 * len(panels), 4.2)
    grid = fig.add_gridspec(2, len(panels), height_ratios=[3, 1])
    for col, (title, cal) in enumerate(panels):
        bins = cal.get("bins") or []
        top = fig.add_subplot(grid[0, col])
        bottom = fig.add_subplot(grid[1, col], sharex=top)
        lowers = [float(b.get("lower", 0.0)) for b in bins]
        widths = [float(b.get("upper", 0.0)) - float(b.get("lower", 0.0)) for b in bins]
        counts = [int(b.get("count") or 0) for b in bins]
        filled = [(lo, w, b) for lo, w, b in zip(lowers, widths, bins, strict=True)
                  if b.get("count") and b.get("accuracy") is not None]
        top.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
        if filled:
            top.bar([lo for lo, _, _ in filled], [b["accuracy"] for _, _, b in filled],
                    width=[w for _, w, _ in filled], align="edge", color="#4c8bd6", edgecolor="#1f4e8c",
                    linewidth=0.6, label="accuracy in bin")
            means = [(b["confidence"], b["accuracy"]) for _, _, b in filled
                     if b.get("confidence") is not None]
            if means:
                top.plot(*zip(*means, strict=True), "o", color="#d64545", markersize=3,
                         label="mean confidence")
        top.set_xlim(0, 1)
        top.set_ylim(0, 1)
        top.set_ylabel("accuracy")
        top.set_title(f"{mpl_text(title)} (ECE {num(cal.get('ece'))})")
        top.legend(loc="upper left", frameon=False)
        top.tick_params(labelbottom=False)
        bottom.bar(lowers, counts, width=widths, align="edge", color="#9fb3c8", edgecolor="#627d98",
                   linewidth=0.5)
        bottom.set_xlabel("confidence")
        bottom.set_ylabel("count")
    return png_uri(fig)


# ---------------------------------------------------------------------------------------------- attributions


def heatmap_figure(heatmap: Any, pixels: Any | None) -> str:
    """An attribution heatmap (values in [0, 1]), over the input image (HxWx3 pixels) if there is one."""
    import numpy as np
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    heat = np.asarray(heatmap, dtype=float)
    fig = figure(3.3, 2.8)
    ax = fig.add_subplot()
    if pixels is not None:
        h, w = pixels.shape[:2]
        ax.imshow(pixels, interpolation="nearest")
        # The heatmap may be coarser than the image (Grad-CAM): stretch it over the whole image.
        ax.imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear",
                  extent=(-0.5, w - 0.5, h - 0.5, -0.5))
    else:
        ax.imshow(heat, cmap="jet", vmin=0, vmax=1)
    # An opaque colourbar: the overlay's alpha would wash its colours out.
    fig.colorbar(ScalarMappable(norm=Normalize(vmin=0, vmax=1), cmap="jet"), ax=ax,
                 label="attribution (scaled)", shrink=0.85)
    ax.set_axis_off()
    ax.set_title("attribution over the input")
    return png_uri(fig)


# ---------------------------------------------------------------------------------------------- faithfulness


def curves_figure(curves: list[tuple[str, dict[str, Any]]], unit: str) -> str:
    fig = figure(3.4 * len(curves), 2.9)
    axes = fig.subplots(1, len(curves), squeeze=False)[0]
    for ax, (name, curve) in zip(axes, curves, strict=True):
        fractions = _floats(curve.get("fractions"))
        for key, color, style in (("attribution", "#d64545", "-"), ("random", "#7b8794", "--")):
            values = _floats(curve.get(key))
            if values and len(values) == len(fractions):
                ax.plot(fractions, values, style, color=color, marker="o", markersize=3,
                        label=f"{key} (AUC {num(curve.get(f'auc_{key}'))})")
        verb = "removed" if name == "deletion" else "inserted"
        ax.set_xlabel(f"fraction of {mpl_text(unit)}s {verb}")
        ax.set_ylabel("score of the original prediction")
        ax.set_title(f"{name} ({'lower' if name == 'deletion' else 'higher'} is better)")
        ax.legend(frameon=False)
    return png_uri(fig)


# --------------------------------------------------------------------------------------------- representation


def scatter_figure(panels: list[tuple[str, dict[str, Any]]], labels: list[str],
                   point_labels: list[int]) -> str:
    import numpy as np
    from matplotlib.lines import Line2D

    n_labels = max(len(labels), max(point_labels, default=-1) + 1)
    names = labels + [str(i) for i in range(len(labels), n_labels)]
    colors = label_colors(n_labels)
    fig = figure(3.4 * len(panels) + (1.2 if n_labels <= 20 else 0), 3.2)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, rep) in zip(axes, panels, strict=True):
        points = np.asarray(rep.get("points"), dtype=float).reshape(-1, 2)
        owners = np.asarray(point_labels[: len(points)] + [0] * (len(points) - len(point_labels)), dtype=int)
        for k in range(n_labels):
            mask = owners == k
            if mask.any():
                ax.scatter(points[mask, 0], points[mask, 1], s=9, color=colors[k], alpha=0.8, linewidths=0)
        variance = rep.get("explained_variance") or []
        if len(variance) == 2 and all(is_num(v) for v in variance):
            ax.set_xlabel(f"PC1 ({100 * variance[0]:.0f} % of variance)")
            ax.set_ylabel(f"PC2 ({100 * variance[1]:.0f} % of variance)")
        ax.set_title(f"{title}\nsilhouette {num(rep.get('silhouette'))} · "
                     f"kNN acc. {num(rep.get('knn_accuracy'))}")
        ax.set_xticks([])
        ax.set_yticks([])
    if n_labels <= 20:
        # Explicit handles and labels: legend() would silently drop labels that start with "_".
        handles = [Line2D([], [], marker="o", linestyle="", color=colors[k], markersize=5)
                   for k in range(n_labels)]
        fig.legend(handles, [mpl_text(name) for name in names], loc="outside right center", frameon=False,
                   title="true label")
    return png_uri(fig)


# ---------------------------------------------------------------------------------------------- stability


def runs_figure(accuracies: list[tuple[float, bool]], baseline: Any) -> str:
    import numpy as np

    values = np.asarray([acc for acc, _ in accuracies], dtype=float)
    bad = np.asarray([b for _, b in accuracies], dtype=bool)
    fig = figure(3.6, 3.4)
    ax = fig.add_subplot()
    ax.boxplot(values, positions=[0], widths=0.5, showfliers=False, medianprops={"color": "#1f4e8c"})
    # Deterministic spread of the dots so equal accuracies stay visible side by side.
    offsets = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else np.zeros(1)
    if (~bad).any():
        ax.scatter(offsets[~bad], values[~bad], s=22, color="#2f6fbf", zorder=3, label="run")
    if bad.any():
        ax.scatter(offsets[bad], values[bad], s=30, marker="x", color="#cf1124", zorder=3,
                   label="degenerate run")
    if is_num(baseline):
        ax.axhline(baseline, color="#d64545", linestyle="--", linewidth=1,
                   label=f"majority baseline {baseline:.3f}")
    ax.set_xticks([0], ["test/acc"])
    ax.set_xlim(-0.6, 0.6)
    ax.set_ylabel("test accuracy")
    ax.set_title(f"test accuracy of {len(values)} runs")
    fig.legend(loc="outside lower center", ncols=2, frameon=False)  # below the plot: never over the dots
    return png_uri(fig)


# ---------------------------------------------------------------------------------------------- regression


def regression_figure(points: list[list[float]]) -> str:
    """Predicted against true scores (the diagonal is perfect), and the residuals (predicted - true) against
    the true score: a trend there is a bias (e.g. pulled towards the mean)."""
    import numpy as np

    data = np.asarray(points, dtype=float).reshape(-1, 2)
    pred, true = data[:, 0], data[:, 1]
    fig = figure(6.8, 3.1)
    left, right = fig.subplots(1, 2)
    low, high = (float(min(pred.min(), true.min())), float(max(pred.max(), true.max()))) if len(data) else (0, 1)
    left.scatter(true, pred, s=7, alpha=0.6, linewidths=0)
    left.plot([low, high], [low, high], color="grey", linewidth=0.8)
    left.set_xlabel("true score")
    left.set_ylabel("predicted score")
    left.set_title("predicted vs true")
    right.scatter(true, pred - true, s=7, alpha=0.6, linewidths=0)
    right.axhline(0, color="grey", linewidth=0.8)
    right.set_xlabel("true score")
    right.set_ylabel("residual (predicted - true)")
    right.set_title("residuals")
    return png_uri(fig)
