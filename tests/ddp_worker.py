"""Run by torchrun in test_train.py: a few data-parallel steps, then each rank saves its weights."""

import sys
from pathlib import Path

import torch
from train_helpers import tiny_config, tiny_splits

from qfa_deploy.train import train

out = Path(sys.argv[1])
torch.set_num_threads(1)
result = train(tiny_config(str(out / "run"), max_steps=3), splits=tiny_splits())
rank = torch.distributed.get_rank()
torch.save({k: v.clone() for k, v in result.supernet.state_dict().items()}, out / f"rank{rank}.pt")
torch.distributed.barrier()
torch.distributed.destroy_process_group()
