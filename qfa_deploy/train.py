"""Supernet training: full-precision warm start, then mixed bits, with the sandwich rule and
in-place distillation; resumable to the step; data-parallel over torch.distributed.

Each step trains, on the same batch, the largest subnet (cross-entropy on labels), the smallest and
``num_random`` random subnets (soft cross-entropy on the largest's predictions), accumulates their
gradients and takes one optimiser step. In the quantized phase the largest runs at the highest and
the smallest at the lowest bitwidth; random subnets draw every conv's bits from the space.

Resuming is exact: the batch order depends on (seed, epoch), the subnets and dropout on (seed,
step), and the checkpoint (written atomically every ``checkpoint_every`` steps) holds the model and
optimiser state. Data parallelism: each rank takes a slice of every global batch; gradients and
float buffers are averaged with ``all_reduce`` after the sandwich (which is why the model is not
wrapped in DistributedDataParallel: one step runs four different subnets).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from qfa_deploy.arch import ArchConfig, sample_arch
from qfa_deploy.calibrate import calibrate
from qfa_deploy.checkpoint import (
    atomic_write_bytes,
    float32_model_state,
    load_checkpoint,
    load_model_state,
    save_checkpoint,
    short_repr,
)
from qfa_deploy.data import Splits, load_splits, resize
from qfa_deploy.errors import QfaError
from qfa_deploy.evaluate import accuracy, evaluate_arch
from qfa_deploy.nn.supernet import QFASupernet
from qfa_deploy.space import create_space

__all__ = ["TrainConfig", "TrainResult", "train"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """What a run does; stored in its checkpoint and checked on resume."""

    space: str
    out: str
    data_dir: str | None = None
    fp_epochs: float = 2.0  # full-precision warm start
    q_epochs: float = 8.0  # mixed-precision phase
    batch_size: int = 128  # global (split over ranks)
    lr: float = 0.1
    q_lr: float = 0.03
    weight_decay: float = 5e-5
    label_smoothing: float = 0.1
    num_random: int = 2
    warmup_steps: int = 100
    grad_clip: float = 5.0
    checkpoint_every: int = 25
    eval_every_epochs: float = 1.0
    eval_images: int = 2000
    seed: int = 0
    act_quantizer: str = "batchquant"
    max_steps: int | None = None  # stop early (tests, smoke runs); the schedule is unchanged
    init_from: str | None = None  # start from another run's weights (a new schedule, a fresh optimiser)
    data_workers: int | None = None  # processes decoding an ImageFolder's files, per rank (None: data.default_workers)

    # Fields that may differ between a run and its resumption.
    RESUMABLE = ("out", "data_dir", "max_steps", "checkpoint_every", "eval_every_epochs", "data_workers")

    def __post_init__(self) -> None:
        create_space(self.space)  # an unknown space: a QfaError naming the known ones
        if not (self.fp_epochs >= 0 and self.q_epochs >= 0):  # also false for NaN
            raise QfaError("--fp-epochs and --q-epochs must be non-negative numbers")
        if self.fp_epochs + self.q_epochs == 0:
            raise QfaError("--fp-epochs and --q-epochs are both 0: nothing to train")
        if self.batch_size < 1 or self.checkpoint_every < 1:
            raise QfaError("--batch-size and --checkpoint-every must be at least 1")


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @classmethod
    def from_env(cls) -> _Dist:
        """This process's rank, the world size (torchrun's environment) and its device: the GPU of its
        local rank where CUDA is available (NCCL between ranks), else the CPU (gloo)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        device = torch.device("cpu")
        if torch.cuda.is_available():
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        if world == 1:
            return cls(device=device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), device)

    def average(self, tensors: list[torch.Tensor]) -> None:
        """All-reduce a list of tensors to their mean over ranks, in one flat buffer."""
        if self.world == 1 or not tensors:
            return
        flat = torch.cat([t.reshape(-1).float() for t in tensors])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


def _lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Linear warm-up then cosine decay, restarted at the start of the quantized phase."""
    fp_steps = round(cfg.fp_epochs * steps_per_epoch)
    q_steps = round(cfg.q_epochs * steps_per_epoch)
    base, start, length = (cfg.lr, 0, fp_steps) if step < fp_steps else (cfg.q_lr, fp_steps, q_steps)
    t = step - start
    if t < cfg.warmup_steps:
        return base * (t + 1) / cfg.warmup_steps
    return 0.5 * base * (1 + math.cos(math.pi * (t - cfg.warmup_steps) / max(1, length - cfg.warmup_steps)))


def _sandwich(cfg: TrainConfig, step: int, quantized: bool) -> list[ArchConfig]:
    sp = create_space(cfg.space)
    rng = random.Random(cfg.seed * 1_000_003 + step)
    hi, lo = max(sp.bit_choices), min(sp.bit_choices)
    archs = [ArchConfig.largest(cfg.space, hi), ArchConfig.smallest(cfg.space, lo if quantized else hi)]
    return archs + [sample_arch(cfg.space, rng) for _ in range(cfg.num_random)]


def _soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    return -(target_probs * F.log_softmax(logits, dim=1)).sum(1).mean()


def _float_buffers(model: torch.nn.Module) -> list[torch.Tensor]:
    return [b for b in model.buffers() if b.is_floating_point()]


class _JsonLog:
    """Append-only JSON lines; on resume, entries past the checkpoint's step are dropped."""

    def __init__(self, path: Path, keep_until_step: int | None) -> None:
        self.path = path
        if keep_until_step is not None and path.exists():
            kept = []
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= keep_until_step:
                        kept.append(line + "\n")
                except json.JSONDecodeError:
                    break  # a line cut by a kill: everything after it is newer anyway
            atomic_write_bytes(path, lambda f: f.write("".join(kept).encode()))
        elif keep_until_step is None:
            path.write_text("")

    def write(self, **entry) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(entry) + "\n")


def _same_setting(a: object, b: object) -> bool:
    """``a == b`` for plain settings read from a checkpoint (numbers by value; a tensor is never a setting)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return False
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        return a == b
    return type(a) is type(b) and a == b


def _validate_resume(path: Path, saved: dict, cfg: TrainConfig) -> None:
    for f in fields(TrainConfig):
        if f.name in TrainConfig.RESUMABLE:
            continue
        if not _same_setting(saved.get(f.name), getattr(cfg, f.name)):
            raise QfaError(f"{path}: cannot resume: {f.name} was {short_repr(saved.get(f.name))} in the run, "
                           f"now {getattr(cfg, f.name)!r}")


@dataclass
class TrainResult:
    checkpoint: Path
    supernet: QFASupernet
    step: int


def _init_weights(net: QFASupernet, cfg: TrainConfig, steps_per_epoch: int) -> bool:
    """Load ``cfg.init_from``'s weights; True when its LSQ steps are to be kept (that run had reached its
    quantized phase, or a converted warm start set them as the seed does).

    A full-precision warm start has untrained activation quantizers: those are left fresh, so one warm
    start can seed runs with either activation quantizer (the BatchQuant vs LSQ ablation). So does a
    converted one (``convert ofa-checkpoint`` writes ``warm_start``): its activation quantizers hold
    start values only, loaded when this run uses the same kind.
    """
    payload = load_checkpoint(cfg.init_from, expect_space=cfg.space)  # step / train_config: None or well typed
    saved = payload.get("train_config")
    if isinstance(saved, dict):
        fp_epochs = saved.get("fp_epochs", 0)
        if not isinstance(fp_epochs, (int, float)) or isinstance(fp_epochs, bool) or not 0 <= fp_epochs < math.inf:
            raise QfaError(f"{cfg.init_from}: train_config fp_epochs {short_repr(fp_epochs)} is not a number of epochs")
    # no config: a released checkpoint, the end of a full run
    quantized = not isinstance(saved, dict) or (payload.get("step") or 0) > round(fp_epochs * steps_per_epoch)
    warm_start = not isinstance(saved, dict) and isinstance(payload.get("warm_start"), str)
    state = float32_model_state(payload)
    same_act = payload.get("act_quantizer", "batchquant") == cfg.act_quantizer
    if quantized and (same_act or not warm_start):
        if not same_act:
            raise QfaError(f"{cfg.init_from}: trained with {payload.get('act_quantizer')!r} activation quantizers, "
                           f"this run uses {cfg.act_quantizer!r}")
        load_model_state(cfg.init_from, net, state)
    else:
        load_model_state(cfg.init_from, net, state, ignore=lambda k: ".act_quant." in k)
    log.info("initialised from %s (step %s)", cfg.init_from, payload.get("step"))
    return quantized


@dataclass
class _Run:
    """One run's model, optimiser and data, and the step it is at: what the training steps share."""

    cfg: TrainConfig
    ddp: _Dist
    net: QFASupernet
    opt: torch.optim.Optimizer
    splits: Splits
    ckpt_path: Path
    steps_per_epoch: int
    step: int = 0
    keep_steps: bool = False  # the LSQ steps of ``init_from`` stay (no re-initialisation at step 0)

    @property
    def is_main(self) -> bool:
        return self.ddp.rank == 0

    @property
    def fp_steps(self) -> int:
        return round(self.cfg.fp_epochs * self.steps_per_epoch)

    @property
    def total(self) -> int:
        return self.fp_steps + round(self.cfg.q_epochs * self.steps_per_epoch)


def train(cfg: TrainConfig, resume: bool = False, splits: Splits | None = None) -> TrainResult:
    """Train (or resume) a supernet up to the end of its schedule (or ``max_steps``)."""
    run = _open_run(cfg, resume, splits)
    stop = run.total if cfg.max_steps is None else min(run.total, cfg.max_steps)
    if stop <= run.step and run.step == 0:  # no step would mean no checkpoint, yet its path printed
        raise QfaError(f"nothing to train: the schedule has {run.total} steps, the run is at step {run.step}"
                       + (f", --max-steps {cfg.max_steps}" if cfg.max_steps is not None else ""))
    jlog = _start_run_folder(run, resume)
    _train_until(run, stop, jlog)
    return TrainResult(run.ckpt_path, run.net, run.step)


def _open_run(cfg: TrainConfig, resume: bool, splits: Splits | None) -> _Run:
    """Data, a seeded supernet and its optimiser, then its weights: resumed, ``init_from``'s, or fresh."""
    ddp = _Dist.from_env()
    sp = create_space(cfg.space)
    ckpt_path = Path(cfg.out) / "checkpoint.pt"
    if ckpt_path.exists() and not resume:
        raise QfaError(f"{ckpt_path} exists: pass --resume to continue it, or choose another --out")
    splits = splits or load_splits(sp, cfg.data_dir, cfg.data_workers)
    torch.manual_seed(cfg.seed)
    net = QFASupernet(sp, act_quantizer=cfg.act_quantizer).to(ddp.device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.param_groups(cfg.weight_decay), lr=cfg.lr, momentum=0.9, nesterov=True)
    steps_per_epoch = len(splits.train) // cfg.batch_size
    if steps_per_epoch < 1:
        raise QfaError(f"--batch-size {cfg.batch_size} is larger than the training split ({len(splits.train)} images)")
    run = _Run(cfg, ddp, net, opt, splits, ckpt_path, steps_per_epoch)
    if resume and ckpt_path.exists():
        run.step = _resume_from_checkpoint(run)
    else:
        run.keep_steps = cfg.init_from is not None and _init_weights(net, cfg, steps_per_epoch)
        if ddp.world > 1:
            for t in [*net.parameters(), *net.buffers()]:
                dist.broadcast(t.data, src=0)
    return run


def _resume_from_checkpoint(run: _Run) -> int:
    """Load the run's checkpoint (model and optimiser) after checking its config; the step it reached."""
    path = run.ckpt_path
    payload = load_checkpoint(path, expect_space=run.net.space.name)  # step / train_config: None or well typed
    _validate_resume(path, payload.get("train_config") or {}, run.cfg)
    if any(k.startswith("blocks.") and ".depthwise.weight_quant." in k for k in payload["model"]):
        # its optimiser state has one depthwise quantizer where the supernet now has one per kernel size
        raise QfaError(f"{path}: written before the per-kernel-size depthwise quantizers; continue it "
                       "with --init-from (its weights carry over exactly, with a fresh optimiser)")
    step = payload.get("step")
    if step is None:
        raise QfaError(f"{path}: no training step recorded; continue from it with --init-from (a fresh schedule)")
    _check_optimizer_state(path, run.opt, payload.get("optimizer"))
    load_model_state(path, run.net, payload["model"])
    try:
        run.opt.load_state_dict(payload["optimizer"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # what _check_optimizer_state cannot foresee
        raise QfaError(f"{path}: optimizer state does not fit this run ({exc.__class__.__name__})") from None
    log.info("resumed %s at step %d", run.ckpt_path, step)
    return step


def _check_optimizer_state(path: Path, opt: torch.optim.Optimizer, saved: object) -> None:
    """Refuse an optimiser state that ``opt.load_state_dict`` would not take, or that would break (or
    poison) the next step: its groups and parameters must be this optimiser's, its settings this run's
    (the learning rate is set every step), its per-parameter tensors of their parameter's shape, finite."""
    def bad(why: str) -> QfaError:
        return QfaError(f"{path}: optimizer state {why}; continue from it with --init-from (a fresh optimiser)")

    if not isinstance(saved, dict):
        raise bad("missing" if saved is None else f"is a {type(saved).__name__}, not a table")
    groups, state = saved.get("param_groups"), saved.get("state")
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise bad("has no list of parameter groups")
    if not isinstance(state, dict):
        raise bad("has no per-parameter state")
    if len(groups) != len(opt.param_groups):
        raise bad(f"has {len(groups)} parameter groups, this run's optimiser {len(opt.param_groups)}")
    params: dict = {}
    for i, (group, mine) in enumerate(zip(groups, opt.param_groups, strict=True)):
        ids = group.get("params")
        if not isinstance(ids, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in ids):
            raise bad(f"group {i} lists no parameter ids")
        if len(ids) != len(mine["params"]):
            raise bad(f"group {i} has {len(ids)} parameters, this run's {len(mine['params'])}")
        for key, value in group.items():
            if key not in ("params", "lr") and key in mine and not _same_setting(value, mine[key]):
                raise bad(f"group {i}: {short_repr(key)} is {short_repr(value)}, this run's {mine[key]!r}")
        params.update(zip(ids, mine["params"], strict=True))
    if len(params) != sum(len(g["params"]) for g in groups):
        raise bad("names a parameter twice")
    for pid, entry in state.items():
        if pid not in params:
            raise bad(f"holds state for parameter {short_repr(pid)}, which none of its groups lists")
        if not isinstance(entry, dict) or not all(isinstance(k, str) for k in entry):
            raise bad(f"for parameter {pid} is not a table")
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                if value.dim() and (value.shape != params[pid].shape or not value.is_floating_point()):
                    raise bad(f"{name} of parameter {pid}: {value.dtype} of shape {list(value.shape)}, "
                              f"expected {params[pid].dtype} of shape {list(params[pid].shape)}")
                if value.is_floating_point() and not torch.isfinite(value).all():
                    raise bad(f"{name} of parameter {pid} holds non-finite values (NaN or infinity)")
            elif value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                            and math.isfinite(value)):
                raise bad(f"{name} of parameter {pid} is {short_repr(value)}")


def _start_run_folder(run: _Run, resume: bool) -> _JsonLog | None:
    """The main rank writes ``train_config.json`` and opens ``log.jsonl`` (cut back to the step on resume)."""
    if not run.is_main:
        return None
    out = Path(run.cfg.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(asdict(run.cfg), indent=2) + "\n")
    except OSError as exc:
        raise QfaError(f"cannot write {out}: {exc.strerror or exc}") from None
    return _JsonLog(out / "log.jsonl", run.step if resume else None)


def _train_until(run: _Run, stop: int, jlog: _JsonLog | None) -> None:
    """Steps up to ``stop``, epoch by epoch, logging, checkpointing and evaluating on the way."""
    cfg, spe = run.cfg, run.steps_per_epoch
    params = [p for p in run.net.parameters()]
    bar = tqdm(total=stop, initial=run.step, unit="step", disable=None if run.is_main else True, dynamic_ncols=True)
    eval_every = max(1, round(cfg.eval_every_epochs * spe))
    throughput = _Throughput()
    while run.step < stop:
        epoch, index = divmod(run.step, spe)
        batches = run.splits.train.batches(
            cfg.batch_size, seed=cfg.seed, epoch=epoch, augment=True, start=index,
            rank=run.ddp.rank, world=run.ddp.world, drop_last=True,
        )
        for x, y in batches:
            if run.step >= stop or run.step // spe != epoch:
                break
            quantized = run.step >= run.fp_steps
            lr, losses = _sandwich_step(run, params, x, y, quantized)
            run.step += 1
            throughput.add(len(y) * run.ddp.world)
            bar.update(1)
            if run.is_main and (run.step % 10 == 0 or run.step == stop):
                now, rate = throughput.take()
                bar.set_postfix(phase="q" if quantized else "fp", loss=f"{losses[0]:.3f}", img_s=f"{rate:.0f}")
                jlog.write(step=run.step, epoch=epoch, phase="quant" if quantized else "fp", lr=lr,
                           loss_largest=losses[0], loss_smallest=losses[1], images_per_s=rate, time=now)
            if run.step % cfg.checkpoint_every == 0 or run.step == stop:
                _save(run)
            if run.is_main and (run.step % eval_every == 0 or run.step == run.total):
                _evaluate_progress(run.net, run.splits, cfg, run.step, quantized, jlog)
    bar.close()


def _sandwich_step(run: _Run, params: list, x: torch.Tensor, y: torch.Tensor, quantized: bool) -> tuple[float, list]:
    """One optimiser step on one batch: every subnet of the sandwich's gradients, averaged over ranks.

    Returns (learning rate, the subnets' losses: largest first, smallest second).
    """
    cfg, net, step = run.cfg, run.net, run.step
    x, y = x.to(run.ddp.device, non_blocking=True), y.to(run.ddp.device, non_blocking=True)
    if step == run.fp_steps and quantized and not (step == 0 and run.keep_steps):
        net.init_weight_steps()  # LSQ steps from the warm-started weights
    lr = _lr_at(cfg, step, run.steps_per_epoch)
    for group in run.opt.param_groups:
        group["lr"] = lr
    torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout
    net.train()
    run.opt.zero_grad(set_to_none=True)  # subnets that skip a parameter leave it untouched
    losses = []
    teacher = None
    for arch in _sandwich(cfg, step, quantized):
        net.set_active(arch, quantized=quantized)
        logits = net(resize(x, arch.resolution).contiguous(memory_format=torch.channels_last))
        if teacher is None:
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            teacher = F.softmax(logits.detach(), dim=1)
        else:
            loss = _soft_cross_entropy(logits, teacher)
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):  # stop before the step: the last checkpoint stays finite
            raise QfaError(f"training diverged: loss {losses[-1]} at step {step} ({arch.short()}); "
                           f"{run.ckpt_path} keeps the last finite state (try a lower --lr / --q-lr)")
        loss.backward()
    run.ddp.average([p.grad for p in params if p.grad is not None])
    run.ddp.average(_float_buffers(net))
    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    run.opt.step()
    return lr, losses


def _save(run: _Run) -> None:
    """The main rank writes the checkpoint of the step reached (atomically)."""
    if run.is_main:
        save_checkpoint(
            run.ckpt_path, run.net.space.name, run.net.state_dict(), optimizer=run.opt.state_dict(), step=run.step,
            train_config=asdict(run.cfg), act_quantizer=run.cfg.act_quantizer,
        )


class _Throughput:
    """Images per second since the last reading."""

    def __init__(self) -> None:
        self.since, self.images = time.time(), 0

    def add(self, images: int) -> None:
        self.images += images

    def take(self) -> tuple[float, float]:
        """(now, images per second since the previous ``take``), and start counting again."""
        now = time.time()
        rate = self.images / max(now - self.since, 1e-9)
        self.since, self.images = now, 0
        return now, rate


def _evaluate_progress(net: QFASupernet, splits: Splits, cfg: TrainConfig, step: int, quantized: bool,
                       jlog: _JsonLog) -> None:
    """Top-1 of the largest and smallest subnets on part of the validation split."""
    sp = net.space
    hi, lo = max(sp.bit_choices), min(sp.bit_choices)
    val = splits.val.subset(cfg.eval_images)
    results = {}
    for name, arch in (("largest", ArchConfig.largest(sp.name, hi)), ("smallest", ArchConfig.smallest(sp.name, lo))):
        if quantized:
            results[name] = evaluate_arch(net, arch, splits.val, val, calib_batches=10)
    if not quantized:
        results = {"largest_fp": _fp_accuracy(net, splits, val, ArchConfig.largest(sp.name))}
    jlog.write(step=step, eval=results, time=time.time())
    log.info("step %d: %s", step, results)


def _fp_accuracy(net: QFASupernet, splits: Splits, val, arch: ArchConfig) -> float:
    """Top-1 of ``arch`` at full precision, on a copy: calibration rewrites the statistics it measures."""
    probe = copy.deepcopy(net)
    probe.set_active(arch, quantized=False)
    calibrate(probe, (x for x, _ in splits.val.batches(100)), arch.resolution, 10)
    return accuracy(probe, val, arch.resolution)
