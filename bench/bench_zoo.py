"""Time to list the zoo and load each shipped model (target: ≤ 3 s each on the 2-core CPU).

    python bench/bench_zoo.py
"""

from __future__ import annotations

import platform
import time

import torch

from npdg.pruning.physical import load_model
from npdg.recipes import zoo


def main() -> None:
    print(f"machine: {platform.system()} {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("command: python bench/bench_zoo.py")
    t0 = time.perf_counter()
    table = zoo.zoo_table()
    print(f"list: {len(table)} entries in {time.perf_counter() - t0:.3f} s")
    for name in table[table["shipped"]]["name"]:
        t0 = time.perf_counter()
        load_model(zoo.zoo_path(name))
        dt = time.perf_counter() - t0
        print(f"load {name:<22} {dt:6.2f} s {'ok' if dt <= 3.0 else 'SLOW (target 3 s)'}")


if __name__ == "__main__":
    main()
