"""The layer x head heatmap of ``intervene heads``: sink share alpha per head, class marked."""

from __future__ import annotations

from pathlib import Path


def fig_head_heatmap(result, path: Path) -> Path:
    """Heatmap of mean alpha (layer rows, head columns); dormant heads marked 'd', sink heads 's'."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    table = result.table
    L, H = int(table["layer"].max()) + 1, int(table["head"].max()) + 1
    alpha = np.full((L, H), np.nan)
    alpha[table["layer"], table["head"]] = table["alpha"]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.35 * H + 2.5), max(3.0, 0.28 * L + 1.5)))
    im = ax.imshow(alpha, aspect="auto", cmap="viridis", vmin=0, vmax=1, origin="lower")
    marks = {"sink": "s", "dormant": "d"}
    for layer, head, cls in zip(table["layer"], table["head"], table["head_class"]):
        if cls in marks:
            ax.text(head, layer, marks[cls], ha="center", va="center", fontsize=7,
                    color="black" if alpha[layer, head] > 0.6 else "white")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    c = result.classes
    ax.set_title(f"alpha on key {c.key_position}; Sink-eps = {result.sink_epsilon:.2f} "
                 f"({len(result.sink_epsilon_per_trace)} traces)\ns: sink head (alpha > {c.epsilon}), "
                 f"d: dormant (output ratio < {c.dormant_ratio})", fontsize=8)
    fig.colorbar(im, ax=ax, label="alpha (attention share of the sink key)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
