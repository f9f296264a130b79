"""Mixed bits against uniform 4 bits under one latency budget: what the search buys with bits.

For each budget, two searches under the same (bit-keyed) latency table: over every bit choice of
every conv, and at 4 bits only (``search --bits 4``). Each pick is measured: test top-1 of its
quantized subnet (the reference numerics, calibrated as ``search --evaluate`` does) and its latency
on the table's device, beside the table's prediction, the predictor's top-1 and the latency of the
same architecture built as the table's models are (random weights). The mixed pick's
architecture is measured again at uniform W4A4 too: what its lower bits bought in latency and cost
in accuracy. Settings, commit and table go into the JSON.

    python bench/mixed_bits.py --table T.json --device rasp4b-sim --data ../shared/data/cifar10 \\
        --budgets 3.2 3.6 --json docs/results/mixed_bits_search.json
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from qfa_deploy.arch import ArchConfig
from qfa_deploy.atomic import write_text_atomic
from qfa_deploy.lut import LatencyTable
from qfa_deploy.resources import packaged_table
from qfa_deploy.search.run import SearchConfig, run_search


def bit_counts(cfg: ArchConfig) -> dict[str, int]:
    """How many of the active convs' (weight, activation) pairs sit at each bitwidth pair."""
    pairs = list(zip(cfg.first_w_bits, cfg.first_a_bits, strict=True)) + [(cfg.final_w_bits, cfg.final_a_bits)]
    for b in cfg.active_blocks():
        pairs += list(zip(cfg.w_bits[b], cfg.a_bits[b], strict=True))
    return {f"W{w}A{a}": n for (w, a), n in sorted(Counter(pairs).items())}


def search(args, budget: float, bits: int | None, folder: Path) -> tuple[ArchConfig, dict]:
    """The chosen subnet of one search and its pareto record (predicted top-1 and table latency)."""
    outcome = run_search(SearchConfig(
        output=str(folder / f"pareto-{budget}-{bits or 'mixed'}.json"), table=args.table, max_latency_ms=budget,
        bits=bits, pop_size=args.pop, generations=args.gen, seed=args.seed, force=True))
    return outcome.best, outcome.best_record


def measure(args, net, splits, cfg: ArchConfig, record: dict, folder: Path, schedule: str) -> dict:
    from qfa_deploy.search.end_to_end import evaluate_choice

    predicted = {k: v for k, v in record.items() if k not in ("arch", "digest")}
    out = evaluate_choice(net, cfg, splits, predicted, calib_batches=args.calib_batches, test_limit=args.test_limit,
                          device=args.device, artifact_dir=folder / cfg.digest()[:12], schedule=schedule)
    return {**out, "table_models_ms": table_models_latency(args, cfg, schedule), "bits": bit_counts(cfg),
            "arch_json": cfg.to_dict()}


def table_models_latency(args, cfg: ArchConfig, schedule: str) -> float:
    """``cfg`` as the table's builds measure a subnet (``lut.parts``: random weights, calibrated on random
    data), on the same device: where it differs from the deployed subnet's latency, the kernels depend
    on the trained weights or the calibration, which the table cannot see."""
    from qfa_deploy.deploy.device import load_device
    from qfa_deploy.deploy.runner import open_session
    from qfa_deploy.lut.measure import measure_onnx
    from qfa_deploy.lut.parts import PartModels

    dev = load_device(args.device)
    with open_session(dev) as session:
        stats = measure_onnx(PartModels(cfg.space, cfg.resolution).subnet(cfg), dev, session, schedule)
    return dev.protocol.latency(stats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--table", required=True, help="bit-keyed latency table of --device")
    ap.add_argument("--device", required=True)
    ap.add_argument("--data", required=True, help="CIFAR-10 folder (test split measured)")
    ap.add_argument("--budgets", type=float, nargs="+", required=True, help="latency budgets, ms")
    ap.add_argument("--pop", type=int, default=100)
    ap.add_argument("--gen", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calib-batches", type=int, default=20)
    ap.add_argument("--test-limit", type=int, default=None)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()

    from qfa_deploy.checkpoint import load_supernet
    from qfa_deploy.data import load_splits
    from qfa_deploy.reference import default_checkpoint

    table = LatencyTable.load(args.table)
    table_path = Path(args.table) if Path(args.table).is_file() else packaged_table(args.table)
    if not table.bits_matter:
        print(f"note: {args.table} keys on no bits: the bits cannot buy latency under it", file=sys.stderr)
    net = load_supernet(default_checkpoint(), table.space)
    splits = load_splits(net.space, args.data)
    rows = []
    with tempfile.TemporaryDirectory(prefix="qfa-mixed-bits-") as tmp:
        folder = Path(tmp)
        for budget in args.budgets:
            mixed, mixed_rec = search(args, budget, None, folder)
            uniform, uniform_rec = search(args, budget, 4, folder)
            twin = mixed.with_uniform_bits(4, 4)
            twin_rec = {"predicted_top1": None, "latency_ms": table.predict(twin)}
            for name, cfg, rec in (("mixed", mixed, mixed_rec), ("uniform W4A4", uniform, uniform_rec),
                                   ("mixed pick at W4A4", twin, twin_rec)):
                got = measure(args, net, splits, cfg, rec, folder, table.schedule)
                rows.append({"budget_ms": budget, "search": name, **got})
                m, p = got["measured"], got["predicted"]
                top1 = f"{p['predicted_top1']:.4f}" if p.get("predicted_top1") is not None else "-"
                measured_ms = m["latency_ms"][m["statistic"]]  # the statistic the table stands for
                print(f"{budget:6.2f} ms  {name:20s} predicted top-1 {top1:>6s}  measured {m['top1']:.4f}  "
                      f"table {p['latency_ms']:.3f} ms  table's models {got['table_models_ms']:.3f} ms  "
                      f"measured {measured_ms:.3f} ms  {got['bits']}", flush=True)
    if args.json:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip()
        result = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": commit, "table": args.table,
            "table_sha256": hashlib.sha256(table_path.read_bytes()).hexdigest()[:16],
            "device": args.device, "settings": {k: v for k, v in vars(args).items() if k not in ("json",)},
            "rows": rows,
        }
        write_text_atomic(Path(args.json), json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
