"""``collect``, ``predictor fit`` and ``search``: accuracy data, its predictor, NSGA-II over the space."""

from __future__ import annotations

from contextlib import nullcontext

import click

from qfa_deploy.atomic import check_output, staged_directory
from qfa_deploy.commands.common import emit_json, load_supernet, set_threads
from qfa_deploy.commands.options import COUNT, POSITIVE_FLOAT, SEED, THREADS, FiniteFloat
from qfa_deploy.errors import QfaError

__all__ = ["COMMANDS"]


def _checkpoint_path(checkpoint: str | None):
    from pathlib import Path

    from qfa_deploy.reference import default_checkpoint

    return Path(checkpoint) if checkpoint else default_checkpoint()


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
def collect(checkpoint, data_dir, samples, output, seed, calib_batches, val_images, threads):
    """Measure the validation top-1 of sampled subnets (resumable: reruns add only missing samples)."""
    from qfa_deploy.data import load_splits
    from qfa_deploy.search.collect import CollectSettings, check_journal, file_digest, val_scorer
    from qfa_deploy.search.collect import collect as run

    check_output(output, append=True)  # a file of ours, in a writable folder: appended to
    check_journal(output)  # before the supernet loads: -o must be this command's journal, or new
    set_threads(threads)
    path = _checkpoint_path(checkpoint)
    net = load_supernet(str(path))
    splits = load_splits(net.space, data_dir)
    measure = val_scorer(net, splits.val, calib_batches, val_images)
    settings = CollectSettings(net.space.name, seed, calib_batches, val_images, file_digest(path))
    records = run(output, samples, settings, measure)
    top1 = [r["top1"] for r in records]
    click.echo(
        f"{len(records)} subnets in {output}: val top-1 {100 * min(top1):.2f}..{100 * max(top1):.2f}% "
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
def fit(data, output, holdout, ensemble, cost_features, hidden, layers, max_epochs, seed, as_json, threads, force):
    """Fit an accuracy predictor on DATA (acc.jsonl from `collect`); report held-out Spearman/RMSE."""
    from qfa_deploy.search.collect import load_records, records_to_arrays
    from qfa_deploy.search.fitting import fit_and_report

    check_output(output, force)
    set_threads(threads)
    records = []
    for path in data:
        records += load_records(path)
    space, cfgs, top1 = records_to_arrays(records, ", ".join(data))
    pred, report = fit_and_report(
        space,
        cfgs,
        top1,
        holdout=holdout,
        seed=seed,
        ensemble=ensemble,
        cost_features=cost_features,
        hidden=hidden,
        layers=layers,
        max_epochs=max_epochs,
        sources=list(data),
    )
    pred.save(output)
    report["output"] = output
    if as_json:
        emit_json(report)
        return
    h, b = report["holdout"], report["baseline_mflops_spearman"]
    click.echo(f"{space}: trained on {report['n_train']} subnets, held out {h['n']}")
    click.echo(
        f"  held-out Spearman {h['spearman']:.4f}  Kendall {h['kendall']:.4f}  "
        f"RMSE {h['rmse_points']:.3f} top-1 points  (MACs alone: Spearman {b:.4f})"
    )
    click.echo(f"  wrote {output}")


@click.command()
@click.option("--checkpoint", default=None, type=click.Path(), help="Supernet (for --evaluate; default: embedded).")
@click.option(
    "--predictor",
    "predictor_path",
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
def search(
    checkpoint,
    predictor_path,
    table,
    objective,
    max_latency_ms,
    max_flops,
    max_bitops,
    pop_size,
    generations,
    seed,
    output,
    best_out,
    plot,
    evaluate,
    device,
    artifacts,
    data_dir,
    calib_batches,
    test_limit,
    as_json,
    threads,
    force,
):
    """NSGA-II: maximise predicted accuracy, minimise latency / MACs / BitOPs under budgets."""
    from qfa_deploy.lut import LatencyTable
    from qfa_deploy.search.genome import GenomeSpace
    from qfa_deploy.search.latency import LatencyModel
    from qfa_deploy.search.nsga import run_nsga
    from qfa_deploy.search.objectives import Constraints, CostEvaluator, Objective
    from qfa_deploy.search.predictor import AccuracyPredictor
    from qfa_deploy.search.report import plot_front, write_best, write_pareto

    set_threads(threads)
    if predictor_path is None:
        from qfa_deploy.reference import default_predictor

        predictor_path = default_predictor()
    if device and not evaluate:
        raise QfaError("--device goes with --evaluate")
    if table is None and (objective == "latency" or max_latency_ms is not None):
        raise QfaError("latency (--objective latency / --max-latency-ms) needs a latency table (--table)")
    pred = AccuracyPredictor.load(predictor_path)
    genome = GenomeSpace(pred.space)
    lut = LatencyTable.load(table) if table else None
    latency = LatencyModel(lut, genome) if lut else None
    if lut and (warning := lut.stale_schedule()):  # once the table fits the search: no warning beside an error
        click.echo(warning, err=True)
    _check_outputs(force, {"-o": output, "--best-out": best_out, "--plot": plot})
    if device:  # before minutes of search: a device that cannot be measured, or not against this table
        _check_device(device, lut)
        check_output(artifacts, force, folder=True, option="--artifacts")
    if evaluate:
        from qfa_deploy.data import load_splits

        net = load_supernet(checkpoint, space=pred.space)
        splits = load_splits(net.space, data_dir)  # missing test data: refused before the search, not after
    elif checkpoint:  # only --evaluate uses it; still, a supernet of another space is a mistake
        from qfa_deploy.checkpoint import load_checkpoint

        load_checkpoint(checkpoint, expect_space=pred.space)
    objective = Objective(objective or ("latency" if table else "flops"))
    constraints = Constraints(max_latency_ms, max_flops, max_bitops)
    result = run_nsga(genome, pred, CostEvaluator(genome, latency), objective, constraints, pop_size, generations, seed)
    write_pareto(result, output)
    best = result.configs()[result.best_index()]
    best_rec = result.records()[result.best_index()]
    if best_out:
        write_best(result, best_out)
    if plot:
        plot_front(result, plot)
    summary = {
        "space": pred.space,
        "objective": objective.value,
        "constraints": dict(constraints.items()),
        "pareto_size": len(result.genomes),
        "seconds": round(result.seconds, 2),
        "evaluations": result.evaluations,
        "best": {k: v for k, v in best_rec.items() if k != "arch"},
        "files": {"pareto": output, "best": best_out, "plot": plot},
    }
    if evaluate:
        from qfa_deploy.search.end_to_end import evaluate_choice

        predicted = {k: v for k, v in best_rec.items() if k not in ("arch", "digest")}
        with staged_directory(artifacts, force) if device else nullcontext() as staging:
            summary["evaluation"] = evaluate_choice(
                net,
                best,
                splits,
                predicted,
                calib_batches=calib_batches,
                test_limit=test_limit,
                device=device,
                artifact_dir=staging,
                schedule=lut.schedule if lut else "auto",
            )
        if device:
            summary["evaluation"]["artifact"] = artifacts
    if as_json:
        emit_json(summary)
        return
    costs = "  ".join(_fmt(m, best_rec[m]) for m in ("latency_ms", "mflops", "gbitops") if m in best_rec)
    click.echo(
        f"NSGA-II {pop_size}x{generations} ({objective.value}; budgets: {constraints.describe()}) "
        f"in {result.seconds:.1f} s: {len(result.genomes)} Pareto subnets -> {output}"
    )
    click.echo(f"chosen: predicted top-1 {100 * best_rec['predicted_top1']:.2f}%  {costs}")
    click.echo(f"  {best.short()}")
    if best_out:
        click.echo(f"  cfg.json: {best_out}")
    if evaluate:
        ev = summary["evaluation"]
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


def _check_outputs(force: bool, outputs: dict[str, str | None]) -> None:
    """Every file the search will write, checked before it runs (and no two the same)."""
    seen = {}
    for option, path in outputs.items():
        if path is None:
            continue
        where = check_output(path, force, option=option)
        if where in seen:
            raise QfaError(f"{option} and {seen[where]} are the same file ({path})")
        seen[where] = option


def _check_device(device: str, lut) -> None:
    from qfa_deploy.deploy.device import load_device
    from qfa_deploy.deploy.runner import open_session

    if lut is not None:  # the same refusal as `lut validate`: other target or statistic = unlike numbers
        from qfa_deploy.lut.validate import check_table_device

        check_table_device(lut, device)
    dev = load_device(device)
    if dev.runner.kind != "local" and dev.runner.kind != "simulated":  # a dead tracker: seconds, not after the search
        open_session(dev, timeout=10.0).close()


def _fmt(metric: str, value: float) -> str:
    return {"latency_ms": f"{value:.3f} ms", "mflops": f"{value:.2f} M MACs", "gbitops": f"{value:.4f} G BitOPs"}[
        metric
    ]


COMMANDS = [collect, predictor, search]
