"""Decoding time against transcript length, log-log, one panel per batch size."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

_STYLES = ("-", "--", ":", "-.")


def plot_times(rows: Sequence[dict], steps: int, path: Path) -> None:
    """AR decoders, PDD decoders at `steps` steps (one line per size and K), encoder floors."""
    batches = sorted({r["batch"] for r in rows if r["family"] in ("ar", "pdd")})
    sizes = list(dict.fromkeys(r["decoder"] for r in rows if r["family"] == "pdd"))
    ks = sorted({r["candidates"] for r in rows if r["family"] == "pdd"})
    colors = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches) + 3.5, 5), squeeze=False)
    for ax, batch in zip(axes[0], batches, strict=True):
        for i, name in enumerate(dict.fromkeys(r["decoder"] for r in rows if r["family"] == "ar")):
            pts = sorted(
                (r["n_tokens"], r["median_s"])
                for r in rows
                if r["family"] == "ar" and r["decoder"] == name and r["batch"] == batch
            )
            ax.plot(
                *zip(*pts, strict=True),
                _STYLES[i % 4],
                color="black",
                marker="o",
                label=f"AR {name}",
            )
        for s, size in enumerate(sizes):
            for j, k in enumerate(ks):
                pts = sorted(
                    (r["n_tokens"], r["median_s"])
                    for r in rows
                    if r["family"] == "pdd"
                    and r["decoder"] == size
                    and r["batch"] == batch
                    and r["steps"] == steps
                    and r["candidates"] == k
                )
                if pts:
                    ax.plot(
                        *zip(*pts, strict=True),
                        _STYLES[s % 4],
                        color=colors(j / max(len(ks) - 1, 1)),
                        marker="s",
                        label=f"PDD {size} T={steps} K={k}",
                    )
        for r in rows:
            if r["family"] == "encoder" and r["batch"] == batch:
                ax.axhline(
                    r["median_s"],
                    color="grey",
                    linestyle=":" if r["window"] == "trim" else "--",
                    label=f"encoder only, {r['window']} window ({r['frames']} frames)",
                )
        lengths = sorted({r["n_tokens"] for r in rows if r["family"] in ("ar", "pdd")})
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="transcript length N (tokens)",
            ylabel="seconds per batch",
            title=f"batch {batch}",
        )
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.minorticks_off()
        ax.grid(True, which="both", alpha=0.3)
    # one legend for both panels, beside them, so that it hides no line
    labelled = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            labelled.setdefault(label, handle)
    fig.legend(labelled.values(), labelled.keys(), loc="center right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
