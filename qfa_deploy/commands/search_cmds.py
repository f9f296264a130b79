"""``collect``, ``predictor fit`` and ``search``: accuracy data, its predictor, NSGA-II over the space."""

from __future__ import annotations

import click

from qfa_deploy.commands.common import emit_json, set_threads
from qfa_deploy.commands.options import COUNT, POSITIVE_FLOAT, SEED, THREADS, FiniteFloat

__all__ = ["COMMANDS"]


@click.command()
@click.option("--checkpoint", default=None, type=click.Path(), help="Supernet checkpoint (default: embedded).")
@click.option("--data", "data_dir", default=None, type=click.Path(), help="Data directory.")
@click.option("--samples", type=COUNT, required=True, help="Measure samples 0..N-1 (missing ones).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="JSON-lines file (appended).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Sample i is drawn from (seed, i).")
@click.option(
    "--calib-batches",
    type=COUNT,
    default=10,
    show_default=True,
    help="Calibration batches of 100 images (the first of the validation split).",
)
@click.option(
    "--val-images",
    type=COUNT,
    default=2000,
    show_default=True,
    help="Score on the last M images of the validation split.",
)
@click.option("--threads", type=THREADS, default=None, help="Torch intra-op threads.")
def collect(threads, **options):
    """Measure the validation top-1 of sampled subnets (resumable: reruns add only missing samples)."""
    from qfa_deploy.search.collect import CollectConfig, run_collect

    set_threads(threads)
    config = CollectConfig(**options)  # every option but --threads, by name
    records = run_collect(config)
    top1 = [r["top1"] for r in records]
    click.echo(
        f"{len(records)} subnets in {config.output}: val top-1 {100 * min(top1):.2f}..{100 * max(top1):.2f}% "
        f"(mean {100 * sum(top1) / len(top1):.2f}%)"
    )


@click.group()
def predictor():
    """Accuracy predictor: fit one on `collect` data."""


@predictor.command()
@click.argument("data", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Predictor file (pred.pt).")
@click.option(
    "--holdout",
    type=FiniteFloat(0.05, 0.5),  # click.FloatRange lets NaN through
    default=0.2,
    show_default=True,
    help="Fraction of subnets held out for the reported Spearman/RMSE.",
)
@click.option(
    "--model",
    type=click.Choice(["mlp", "ridge"]),
    default="mlp",
    show_default=True,
    help="mlp: the seed's MLP on one-hot choices (thousands of subnets); ridge: a linear model on ~30 summary "
    "features, better with a few hundred (docs/search.md).",
)
@click.option(
    "--ensemble",
    type=click.IntRange(1, 16),
    default=1,
    show_default=True,
    help="MLPs averaged (each one adds its forward pass to every search generation).",
)
@click.option(
    "--cost-features/--no-cost-features",
    default=True,
    show_default=True,
    help="Feed log MACs and log BitOPs besides the one-hot encoding.",
)
@click.option("--hidden", type=click.IntRange(8, 4096), default=400, show_default=True)
@click.option("--layers", type=click.IntRange(1, 8), default=3, show_default=True)
@click.option("--max-epochs", type=click.IntRange(1, 100_000), default=400, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.option("--threads", type=THREADS, default=None)
@click.option("--force", is_flag=True, help="Replace -o if it exists.")
def fit(as_json, threads, **options):
    """Fit an accuracy predictor on DATA (acc.jsonl from `collect`); report held-out Spearman/RMSE."""
    from qfa_deploy.search.fitting import PredictorFitConfig, run_predictor_fit

    set_threads(threads)
    config = PredictorFitConfig(**options)  # every option but --json and --threads, by name
    report = run_predictor_fit(config)
    output, space = config.output, report["space"]
    if as_json:
        emit_json(report)
        return
    h, b = report["holdout"], report["baseline_mflops_spearman"]
    click.echo(f"{space}: {report['model']} trained on {report['n_train']} subnets, held out {h['n']}")
    click.echo(
        f"  held-out Spearman {h['spearman']:.4f}  Kendall {h['kendall']:.4f}  "
        f"RMSE {h['rmse_points']:.3f} top-1 points  (MACs alone: Spearman {b:.4f})"
    )
    click.echo(f"  wrote {output}")


@click.command()
@click.option("--checkpoint", default=None, type=click.Path(), help="Supernet (for --evaluate; default: embedded).")
@click.option(
    "--predictor",
    "predictor",
    default=None,
    type=click.Path(dir_okay=False),
    help="Accuracy predictor from `qfa-deploy predictor fit` (default: the embedded one, for the embedded checkpoint).",
)
@click.option("--table", default=None, type=click.Path(dir_okay=False), help="Latency table (JSON) of the device.")
@click.option(
    "--objective",
    type=click.Choice(["latency", "flops", "bitops"]),
    default=None,
    help="Cost to minimise [default: latency with --table, else flops].",
)
@click.option("--max-latency-ms", type=POSITIVE_FLOAT, default=None, help="Latency budget (needs --table).")
@click.option("--max-flops", type=POSITIVE_FLOAT, default=None, help="MACs budget, in millions.")
@click.option("--max-bitops", type=POSITIVE_FLOAT, default=None, help="BitOPs budget, in billions.")
@click.option("--bits", type=click.IntRange(1, 8), default=None,
              help="Every conv's weights and activations at this width only (default: mixed, per conv).")
@click.option("--pop", "pop_size", type=click.IntRange(2, 100_000), default=100, show_default=True)
@click.option("--gen", "generations", type=click.IntRange(1, 100_000), default=100, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="pareto.json to write.")
@click.option("--best-out", default=None, type=click.Path(dir_okay=False), help="cfg.json of the chosen subnet.")
@click.option("--plot", default=None, type=click.Path(dir_okay=False), help="PNG of the front.")
@click.option("--evaluate", is_flag=True, help="Measure the chosen subnet: test top-1 (and latency with --device).")
@click.option("--device", default=None, help="With --evaluate: compile, run and time it on this device.")
@click.option(
    "--artifacts",
    default="search-artifact",
    show_default=True,
    type=click.Path(file_okay=False),
    help="With --device: folder for the ONNX model and compiled library.",
)
@click.option("--data", "data_dir", default=None, type=click.Path(), help="With --evaluate: data directory.")
@click.option("--calib-batches", type=COUNT, default=20, show_default=True, help="With --evaluate.")
@click.option("--test-limit", type=COUNT, default=None,
              help="With --evaluate: N test images only (fixed random subset).")
@click.option("--json", "as_json", is_flag=True)
@click.option("--threads", type=THREADS, default=None)
@click.option("--force", is_flag=True, help="Replace -o, --best-out, --plot and --artifacts if they exist.")
def search(as_json, threads, **options):
    """NSGA-II: maximise predicted accuracy, minimise latency / MACs / BitOPs under budgets."""
    from qfa_deploy.search.run import SearchConfig, run_search

    set_threads(threads)
    config = SearchConfig(**options)  # every option but --json and --threads, by name
    outcome = run_search(config, warn=lambda message: click.echo(message, err=True))
    if as_json:
        emit_json(outcome.summary)
        return
    _echo_search(config, outcome)


def _echo_search(config, outcome) -> None:
    """The search's summary in words: the front, the chosen subnet, and what --evaluate measured."""
    result, best_rec = outcome.result, outcome.best_record
    costs = "  ".join(_fmt(m, best_rec[m]) for m in ("latency_ms", "mflops", "gbitops") if m in best_rec)
    click.echo(
        f"NSGA-II {config.pop_size}x{config.generations} ({result.objective.value}; budgets: "
        f"{result.constraints.describe()}) in {result.seconds:.1f} s: {len(result.genomes)} Pareto subnets "
        f"-> {config.output}"
    )
    click.echo(f"chosen: predicted top-1 {100 * best_rec['predicted_top1']:.2f}%  {costs}")
    click.echo(f"  {outcome.best.short()}")
    if config.best_out:
        click.echo(f"  cfg.json: {config.best_out}")
    if config.evaluate:
        ev = outcome.summary["evaluation"]
        m = ev["measured"]
        click.echo(
            f"measured: test top-1 {100 * m['top1']:.2f}% on {m['test_images']} images "
            f"(predicted {100 * best_rec['predicted_top1']:.2f}%, predictor trained on validation top-1)"
        )
        if "latency_ms" in m:
            pred_lat = (
                f" (table predicted {best_rec['latency_ms']:.3f} ms)"
                if "latency_ms" in best_rec
                else " (no --table: no latency prediction to compare)"
            )
            stat = m["statistic"]
            click.echo(f"measured: {m.get('timing', 'latency')} {stat} {m['latency_ms'][stat]:.3f} ms{pred_lat}")
        click.echo(f"  {ev['deploy']}")


def _fmt(metric: str, value: float) -> str:
    return {"latency_ms": f"{value:.3f} ms", "mflops": f"{value:.2f} M MACs", "gbitops": f"{value:.4f} G BitOPs"}[
        metric
    ]


COMMANDS = [collect, predictor, search]
