"""One PNG comparing models: how long their answers are, and how fast they were generated."""

import io

from batch_pipeline.comparison.stats import ModelSummary


def comparison_chart(lengths: dict[str, list[int]], summaries: list[ModelSummary]) -> bytes:
    """`lengths`: model -> completion tokens of each successful answer."""
    # Imported here: pyplot adds ~0.3 s to the start of every run worker and sensor process otherwise.
    import matplotlib

    matplotlib.use("Agg")  # no display in run workers; must precede pyplot's import
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=80)
    try:
        models = [summary.model for summary in summaries]
        left.boxplot([lengths.get(model, []) for model in models], orientation="horizontal", tick_labels=models,
                     showmeans=True)
        left.set_title("answer length (completion tokens)")
        left.set_xlabel("tokens")
        speeds = [summary.generated_tokens_per_s or 0.0 for summary in summaries]
        bars = right.barh(models, speeds, color="tab:blue")
        right.bar_label(bars, labels=[f"{s:.0f}" if s else "unknown" for s in speeds], padding=3)
        right.set_title("throughput (generated tokens/s, latest run)")
        right.set_xlabel("tokens/s")
        right.margins(x=0.25)
        right.set_yticks(range(len(models)), labels=[""] * len(models))
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        return buffer.getvalue()
    finally:
        plt.close(figure)
