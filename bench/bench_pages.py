"""Server-side speed of the Styles, Sensitivity and Unit pages on the zoo's r18-erm (128×256).

Each figure is the wall time of one script rerun under Streamlit's AppTest after one interaction
(what the server spends before the browser can draw; the browser's own rendering is not included —
``bench/bench_dashboard.py`` measures that end to end). Targets (issue #12, 2-core CPU): λ / score
/ colour changes ≤ 0.3 s; heatmap click ≤ 0.5 s; a precomputed probe opens ≤ 2 s; 8 DSP styles
with CE ≤ 1 s; heatmap payload ≤ 1 MB per rerun.

    python bench/bench_pages.py [--repeats 7]

Prune page targets (issue #13): rate slider on a cached rate ≤ 0.2 s, on a new rate ≤ 1 s;
per-layer curves for all groups of R18 ≤ 3 min; Compare toggles ≤ 0.2 s, a new scene ≤ 1 s.
Explain (issue #14): Grad-CAM and the per-unit view ≤ 0.5 s.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NPDG_CACHE", tempfile.mkdtemp(prefix="npdg-bench-cache-"))

import torch  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from app import heatmap  # noqa: E402
from npdg.recipes import zoo  # noqa: E402
from npdg.service import clear_caches  # noqa: E402

APP = str(ROOT / "app" / "main.py")
ROWS: list[tuple[str, list[float], float | None]] = []


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def record(name: str, times: list[float], target: float | None) -> None:
    ROWS.append((name, times, target))
    med = statistics.median(times)
    p95 = sorted(times)[max(0, int(round(0.95 * len(times))) - 1)]
    verdict = "" if target is None else ("ok" if p95 <= target else f"SLOW (target {target:g} s)")
    print(f"{name:<46} median {med:6.3f} s  p95 {p95:6.3f} s  n={len(times):<3} {verdict}", flush=True)


def open_page(path: str, **query) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=300)
    for k, v in query.items():
        at.query_params[k] = v
    at.run()
    at.switch_page(path).run()
    assert not at.exception, at.exception
    return at


def bench_sensitivity(repeats: int) -> None:
    clear_caches()
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    record("sensitivity: open, precomputed probe (cold)", [timed(lambda: at.switch_page("../pages/sensitivity.py").run())], 2.0)
    charts = [e for e in at.main if type(e).__name__ == "UnknownElement" and e.type == "echarts_chart"]
    size = len(charts[0].proto.SerializeToString())
    print(f"{'sensitivity: heatmap payload':<46} {size / 1e6:.3f} MB {'ok' if size <= 1e6 else 'TOO BIG (1 MB)'}")
    lams = [0.1, 0.9] * repeats
    record("sensitivity: λ slider", [timed(lambda v=v: at.slider(key="lam").set_value(v).run()) for v in lams], 0.3)
    scores = ["unary", "binary", "combined"] * repeats
    record("sensitivity: score radio", [timed(lambda v=v: at.radio(key="score").set_value(v).run()) for v in scores], 0.3)
    import pandas as pd

    cells = heatmap.bin_layers(pd.read_csv(zoo.ZOO_DIR / "r18-erm" / "sensitivity_dsp.csv"), "combined")
    rows = list(range(0, len(cells), max(1, len(cells) // (2 * repeats))))[: 2 * repeats]

    def click(r: int) -> None:
        at.session_state["sens_heatmap"] = {"selection": {"selected": [{"series_index": 0, "data_indices": [r]}],
                                                          "areas": []}}
        at.run()

    record("sensitivity: heatmap click", [timed(lambda r=r: click(r)) for r in rows], 0.5)


def bench_styles(repeats: int) -> None:
    clear_caches()
    at = open_page("../pages/styles.py")
    times = []
    for seed in range(repeats):  # a new seed = 8 new styles, each with the model's CE (cache miss)
        at.slider(key="k").set_value(8).run()
        times.append(timed(lambda s=seed: at.number_input(key="seed").set_value(100 + s).run()))
    record("styles: 8 new DSP styles with CE (whole rerun)", times, 1.0)
    alphas = [0.5, 0.8] * repeats
    record("styles: α slider (cached after the first)", [timed(lambda v=v: at.slider(key="alpha").set_value(v).run())
                                                        for v in alphas], None)


def bench_unit(repeats: int) -> None:
    clear_caches()
    at = AppTest.from_file(APP, default_timeout=300)
    at.query_params["layer"] = "encoder.layer2.0.bn1"
    at.run()
    record("unit: open (maps in 8 domains, cold)", [timed(lambda: at.switch_page("../pages/unit.py").run())], 2.0)
    from npdg.service import jobs

    jobs.wait_all(timeout=600)
    at.run()
    units = list(range(1, 2 * repeats + 1))
    record("unit: next unit (maps + patches)", [timed(lambda u=u: at.number_input(key="unit").set_value(u).run())
                                                for u in units], 1.0)


def bench_prune(repeats: int) -> None:
    from npdg.service import jobs
    from npdg.service import pruning as pr

    clear_caches()
    at = open_page("../pages/prune.py")  # zoo:r18-npdg-sparse, npdg, r = 0.3, 2 scenes per domain
    new = [0.05 * i for i in range(1, 15) if abs(0.05 * i - 0.3) > 1e-9][: 2 * repeats]
    record("prune: rate slider, a new rate", [timed(lambda v=v: at.slider(key="rate").set_value(round(v, 2)).run())
                                             for v in new], 1.0)
    again = [round(v, 2) for v in new[:repeats]] * 2
    record("prune: rate slider, a cached rate", [timed(lambda v=v: at.slider(key="rate").set_value(v).run())
                                                for v in again], 0.2)
    model = zoo.ZOO_DIR / "r18-npdg-sparse"
    t0 = time.perf_counter()
    status = pr.layer_curves_job(model, "npdg")
    jobs.wait(status.key)
    n = len(pr.job_frame(status))
    record(f"prune: per-layer curves, all {n // len(pr.LAYER_RATES)} groups × {len(pr.LAYER_RATES)} rates",
           [time.perf_counter() - t0], 180.0)


def bench_compare(repeats: int) -> None:
    clear_caches()
    at = open_page("../pages/compare.py")  # zoo:r18-erm vs zoo:r18-npdg, all 8 domains
    scenes = list(range(1, 2 * repeats + 1))
    record("compare: a new scene (8 domains × 2 models)", [timed(lambda i=i: at.number_input(key="scene").set_value(i).run())
                                                          for i in scenes], 1.0)
    ops = [0.3, 0.7] * repeats
    record("compare: opacity toggle", [timed(lambda v=v: at.slider(key="op").set_value(v).run()) for v in ops], 0.2)
    classes = ["car", "road", "all classes (right / wrong)"] * repeats
    record("compare: error class toggle", [timed(lambda c=c: at.selectbox(key="cls").set_value(c).run())
                                           for c in classes], 0.2)


def bench_explain(repeats: int) -> None:
    clear_caches()
    at = open_page("../pages/explain.py", dom="fog", target="class")  # zoo:r18-erm vs zoo:r18-npdg, Grad-CAM
    classes = ["road", "building", "vegetation", "sky", "sidewalk", "car", "person", "terrain", "pole", "wall",
               "fence", "truck", "bus", "rider"][: 2 * repeats]
    record("explain: a new class (Grad-CAM A+B, units of A)",
           [timed(lambda c=c: at.selectbox(key="class").set_value(c).run()) for c in classes], 0.5)
    layers = ["net.encoder.layer1.0.bn1", "net.encoder.layer2.0.bn1", "net.encoder.layer3.0.bn1",
              "net.encoder.layer4.0.bn1", "net.encoder.layer1.1.bn2", "net.encoder.layer2.1.bn2",
              "net.encoder.layer3.1.bn2", "net.encoder.layer4.1.bn1", "net.decoder.aspp.0.project.1",
              "net.encoder.bn1"][: 2 * repeats]
    record("explain: a new layer (Grad-CAM A+B, units of A)",
           [timed(lambda v=v: at.selectbox(key="layer").set_value(v).run()) for v in layers], 0.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if not (zoo.ZOO_DIR / "r18-erm" / "sensitivity_dsp.csv").is_file():
        sys.exit("error: the zoo's r18-erm is not shipped (assets/zoo/r18-erm)")
    print(f"machine: {platform.system()} {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} "
          f"torch threads, torch {torch.__version__}, python {platform.python_version()}")
    print(f"command: python bench/bench_pages.py --repeats {args.repeats}")
    print("figures: wall time of one AppTest script rerun per interaction (server side), model zoo:r18-erm, 128×256")
    bench_sensitivity(args.repeats)
    bench_styles(args.repeats)
    bench_unit(args.repeats)
    bench_prune(args.repeats)
    bench_compare(args.repeats)
    bench_explain(args.repeats)


if __name__ == "__main__":
    main()
