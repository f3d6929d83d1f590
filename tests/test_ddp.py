"""Multi-process training: torchrun with 2 CPU processes (gloo) — identical weights, rank-0-only files,
and an all-reduced evaluation equal to the single-process one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent(
    '''
    import json, os, sys
    from pathlib import Path

    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.utils.data import Dataset

    from npdg.config import Config, apply_overrides
    from npdg.train import train

    PALETTE = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.8, 0.2], [0.2, 0.2, 0.9]])

    class BlockDataset(Dataset):
        def __init__(self, n=12, size=(32, 32), seed=0):
            g = torch.Generator().manual_seed(seed)
            blocks = torch.randint(0, 3, (n, size[0] // 8, size[1] // 8), generator=g)
            self.labels = blocks.repeat_interleave(8, 1).repeat_interleave(8, 2)
            noise = 0.05 * torch.randn(n, 3, *size, generator=g)
            self.images = (PALETTE[self.labels].permute(0, 3, 1, 2) + noise).clamp(0, 1)
        def __len__(self):
            return len(self.labels)
        def __getitem__(self, i):
            return {"image": self.images[i], "label": self.labels[i], "domain": "blocks", "split": "val",
                    "index": i, "name": f"b{i}"}

    class TinySeg(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
            self.head = nn.Conv2d(8, 19, 1)
        def forward(self, x):
            return self.head(self.encoder(x))

    out = Path(sys.argv[1])
    rank = int(os.environ["RANK"])
    torch.manual_seed(100 + rank)  # different initial weights per rank: DDP must broadcast rank 0's
    model = TinySeg()
    cfg = apply_overrides(Config(), ["data.size=32x32", "train.iters=4", "train.batch_size=2", "train.lr=0.1",
                                     "train.log_every=2", "train.checkpoint_every=2", "train.crop=24x24",
                                     "eval.include_source=false"])
    result = train(cfg, out / "run", model=model, train_dataset=BlockDataset(), device="cpu",
                   evaluate_at_end=False)
    assert dist.is_initialized() and dist.get_world_size() == 2
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, out / f"rank{rank}.pt")

    # distributed evaluation (npdg.evaluate all-reduces its confusion matrix); rank 0 reports it
    from npdg.evaluate import evaluate, protocol_of

    res = evaluate(model, {"blocks": BlockDataset(n=7, seed=5)}, protocol_of(cfg), 2, torch.device("cpu"),
                   targets=["blocks"])
    if rank == 0:
        (out / "ddp_eval.json").write_text(json.dumps(res.to_dict()))
    dist.barrier()
    dist.destroy_process_group()
    '''
)


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
           str(script), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:  # parameters (all-reduced gradients) and BN buffers (broadcast from rank 0)
        assert torch.equal(a[k], b[k]), k
    torch.manual_seed(100)
    init = torch.nn.Conv2d(3, 8, 3, padding=1).weight
    assert not torch.equal(a["encoder.0.weight"], init)  # it trained

    run = tmp_path / "run"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["iter"] for x in lines] == [2, 4]  # written once (rank 0 only), not twice
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and ckpt["iter"] == 4
    for k in a:
        assert torch.equal(ckpt["model"][k], a[k]), k

    ddp_eval = tmp_path / "ddp_eval.json"
    # the same model and data in a single process
    sys.path.insert(0, str(tmp_path))
    try:
        ns: dict = {}
        exec(compile(WORKER.split("out = Path")[0], "worker_defs", "exec"), ns)
    finally:
        sys.path.remove(str(tmp_path))
    from npdg.config import Config
    from npdg.evaluate import evaluate
    from npdg.evaluate import protocol_of as _protocol

    model = ns["TinySeg"]()
    model.load_state_dict(a)
    single = evaluate(model, {"blocks": ns["BlockDataset"](n=7, seed=5)}, _protocol(Config()), 2,
                      torch.device("cpu"), targets=["blocks"]).to_dict()
    distributed = json.loads(ddp_eval.read_text())
    assert distributed["results"]["blocks"]["num_images"] == single["results"]["blocks"]["num_images"] == 7
    assert distributed["results"]["blocks"]["miou"] == pytest.approx(single["results"]["blocks"]["miou"], abs=1e-12)
    assert distributed["results"]["blocks"]["per_class_iou"] == pytest.approx(single["results"]["blocks"]["per_class_iou"])
