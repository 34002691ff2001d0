"""`ember eval kv --plot`: perplexity and passkey accuracy against the compression ratio, one
line per press (its ratios) and one per codec family, kvpress's leaderboard shape."""

from __future__ import annotations


def family(row: dict) -> str:
    if row["press"]:
        base = row["press"].split(":")[0]
        return base if row["codec"] == "auto" else f"{row['codec']}+{base}"
    return "codecs"


def plot_kv_eval(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["results"]
    has_passkey = any("passkey" in r for r in rows)
    fig, axes = plt.subplots(1, 2 if has_passkey else 1, figsize=(12 if has_passkey else 6.5, 4.5), squeeze=False)
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(family(r), []).append(r)
    panels = [("perplexity", lambda r: r["perplexity"])]
    if has_passkey:
        panels.append(("passkey accuracy", lambda r: r.get("passkey", {}).get("accuracy", float("nan"))))
    for ax, (label, value) in zip(axes[0], panels):
        for name, members in sorted(groups.items()):
            members = sorted(members, key=lambda r: r["compression_vs_bf16"])
            xs = [r["compression_vs_bf16"] for r in members]
            style = "o" if name == "codecs" else "o-"
            ax.plot(xs, [value(r) for r in members], style, label=name)
            if name == "codecs":
                for r in members:
                    ax.annotate(r["codec"], (r["compression_vs_bf16"], value(r)), fontsize=7,
                                textcoords="offset points", xytext=(3, 3))
        ax.set_xlabel("KV bytes: bf16 / method (higher is smaller)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"ember eval kv: {result['context']}-token context, {result['continuation']} scored tokens x "
                 f"{result['windows']} windows", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
