"""`--plot FILE.png`: a latency histogram (matplotlib, optional)."""

from typing import Sequence

from bertc.errors import BertcError


def save_latency_histogram(latencies_ms: Sequence[float], path: str, title: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BertcError(f"--plot {path}: matplotlib is not installed; expected "
                         "`pip install matplotlib` (or leave out --plot)") from None
    if not latencies_ms:
        raise BertcError(f"--plot {path}: no successful requests to plot")
    import numpy as np
    values = np.asarray(latencies_ms)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(values, bins=50, color="#4472c4")
    for p, style in ((50, "-"), (90, "--"), (99, ":")):
        v = float(np.percentile(values, p))
        ax.axvline(v, color="black", linestyle=style, linewidth=1, label=f"p{p} {v:.1f} ms")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("requests")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except OSError as e:
        raise BertcError(f"--plot {path}: cannot write ({e.strerror})") from None
    finally:
        plt.close(fig)
