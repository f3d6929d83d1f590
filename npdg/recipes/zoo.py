"""The demo model zoo: the trained models in ``assets/zoo/`` every dashboard page starts from.

One table (:data:`ENTRIES`) says how each model is made — a training run, a sparse-training run of a
parent, or a prune of a parent — on the embedded benchmark at 128×256. :func:`build` makes them in
order, each in its own run folder under ``runs/zoo/`` (resumable: an interrupted build continues
where it stopped, model by model), then *exports* each one to ``assets/zoo/NAME/``: fp16
``model.safetensors`` (+ ``pruning_plan.json``), the resolved ``config.yaml``, precomputed
sensitivity tables for dense models (DSP styles, and the "oracle" probe on held-out renderings of
the same scenes), and a model card ``card.json`` whose numbers are measured on the shipped fp16
files, not taken from training logs. :func:`verify` re-checks a zoo; :func:`zoo_table` lists it.

The DSP model's ascent step is chosen on *source* scenes only (:func:`choose_ascent_step`), never on
held-out domains: the largest step whose ascended styles stay inside the colour range of the
DSP's own random styles (docs/method.md §1.5).
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from npdg.config import PruneConfig, load_config
from npdg.cost import cost_report
from npdg.data.specs import domain_stack, open_dataset, open_named, spread_images
from npdg.data.synthetic import SOURCE_DOMAIN, domain_names
from npdg.dsp.explore import style_grid
from npdg.dsp.model import DSP
from npdg.errors import DataError
from npdg.evaluate import evaluate, get_protocol
from npdg.models import save_model, select_device
from npdg.pruning.physical import load_model
from npdg.recipes.prune import DEFAULT_DSP, prune_run
from npdg.recipes.sparse import sparse_train
from npdg.recipes.train import train
from npdg.runs import atomic_write_json, atomic_write_text, load_checkpoint, read_metrics
from npdg.sensitivity import SensitivityResult, probe

REPO = Path(__file__).resolve().parents[2]
ZOO_DIR = REPO / "assets" / "zoo"
WORK_DIR = REPO / "runs" / "zoo"
DSP_DIR = DEFAULT_DSP
#: The evaluation set of every card: the first N scenes of each synthetic domain's val split.
EVAL_SPLIT, EVAL_SCENES, EVAL_SIZE = "val", 50, (128, 256)
COST_SIZES = ((128, 256), (512, 1024))
#: ``zoo verify --eval N`` compares with the card's mIoU on this many scenes (or on EVAL_SCENES).
VERIFY_SCENES = 20
#: Ascent steps tried for the DSP model (largest first) and the number of steps ascended.
ASCENT_CANDIDATES, ASCENT_PROBE_STEPS = (1.0, 0.5, 0.25), 9
R18 = "configs/demo/deeplabv3plus_r18.yaml"
MITB0 = "configs/demo/segformer_mitb0.yaml"
DSP_SET = ("dsp.path=assets/dsp_tiny",)  # relative to the repository root: shipped configs stay portable
CARD = "card.json"


@dataclass(frozen=True)
class Entry:
    """How one zoo model is made (``kind``: train | sparse | prune)."""

    name: str
    summary: str
    kind: str
    config: str | None = None
    parent: str | None = None
    overrides: tuple[str, ...] = ()
    #: sparse: (training mode, iterations, λ_s)
    sparse: tuple[str, int, float] | None = None
    prune: dict[str, Any] = field(default_factory=dict)
    #: train: choose dsp.step_size on source scenes with this parent's segmentor
    choose_step_with: str | None = None

    @property
    def dense(self) -> bool:
        return self.kind != "prune"


ENTRIES: tuple[Entry, ...] = (
    Entry("r18-erm", "DeepLabV3+ ResNet-18, plain cross-entropy on the source domain", "train", R18),
    Entry("r18-dsp", "DeepLabV3+ ResNet-18 trained on [clean, DSP-stylized] batches with ε ascent", "train", R18,
          overrides=("train.mode=dsp", *DSP_SET), choose_step_with="r18-erm"),
    Entry("r18-npdg-sparse", "r18-dsp after sensitivity-weighted sparse training (dense, before pruning)",
          "sparse", parent="r18-dsp", sparse=("npdg", 200, 0.02)),
    Entry("r18-npdg", "r18-npdg-sparse pruned at r = 0.3 by |γ| (physically), fine-tuned on DSP batches",
          "prune", parent="r18-npdg-sparse", prune={"criterion": "npdg", "finetune_iters": 200}),
    Entry("r18-slimming-sparse", "r18-dsp after plain L1 sparse training (Network Slimming, dense)",
          "sparse", parent="r18-dsp", sparse=("slimming", 200, 0.02)),
    Entry("r18-slimming", "r18-slimming-sparse pruned at r = 0.3 by |γ| (physically), fine-tuned on DSP batches",
          "prune", parent="r18-slimming-sparse", prune={"criterion": "slimming", "finetune_iters": 200}),
    Entry("mitb0-erm", "SegFormer MiT-B0, plain cross-entropy on the source domain", "train", MITB0),
    Entry("mitb0-dsp", "SegFormer MiT-B0 trained on [clean, DSP-stylized] batches with ε ascent", "train", MITB0,
          overrides=("train.mode=dsp", *DSP_SET), choose_step_with="mitb0-erm"),
    Entry("mitb0-npdg-sparse", "mitb0-dsp after sensitivity-weighted sparse training of its head gates (dense)",
          "sparse", parent="mitb0-dsp", sparse=("npdg", 200, 0.02)),
    Entry("mitb0-npdg", "mitb0-npdg-sparse with 30 % of its attention heads pruned (heads only), fine-tuned",
          "prune", parent="mitb0-npdg-sparse", prune={"criterion": "npdg", "finetune_iters": 200, "units": "heads"}),
)
BY_NAME = {e.name: e for e in ENTRIES}


# ------------------------------------------------------------------------------------------ building
def _done(run: Path, iters: int) -> bool:
    ckpt = run / "checkpoints" / "last.pt"
    if not (run / "model.safetensors").is_file() or not ckpt.is_file():
        return False
    return int(load_checkpoint(ckpt, required={"iter": int})["iter"]) >= iters


def _colour_shift(styled: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    """‖mean RGB(styled) − mean RGB(input)‖ per (image, style), images uint8 ``[B, K, H, W, 3]``."""
    s = styled.astype(np.float32).mean(axis=(-3, -2)) / 255.0
    x = inputs.astype(np.float32).mean(axis=(-3, -2))[:, None] / 255.0
    return np.linalg.norm(s - x, axis=-1)


def choose_ascent_step(segmentor_run: Path, n_images: int = 16, device: str = "auto",
                       size: tuple[int, int] = EVAL_SIZE, dsp_dir: Path | None = None) -> dict[str, Any]:
    """The largest ascent step (of :data:`ASCENT_CANDIDATES`) whose styles, after
    :data:`ASCENT_PROBE_STEPS` steps against ``segmentor_run``, keep a mean colour shift within the
    90th percentile of the DSP's random styles — measured on source *val* scenes only (at ``size``,
    with the DSP in ``dsp_dir``, default the shipped one)."""
    dev = select_device(device)
    seg = load_model(segmentor_run, device=dev)
    dsp = DSP.load(DSP_DIR if dsp_dir is None else dsp_dir, device=dev)
    ds = open_dataset(SOURCE_DOMAIN, "val", tuple(size), n_images)
    images = torch.stack([ds[i]["image"] for i in range(len(ds))])
    labels = torch.stack([ds[i]["label"] for i in range(len(ds))])
    rows, limit = [], None
    for step in ASCENT_CANDIDATES:
        g = style_grid(dsp, images, labels, seg, 2, ASCENT_PROBE_STEPS, step_size=step, seed=0)
        rand = _colour_shift(g.random, g.inputs)
        limit = float(np.percentile(rand, 90)) if limit is None else limit
        asc = float(_colour_shift(g.ascended, g.inputs).mean())
        rows.append({"step_size": step, "ascended_colour_shift": asc, "ce_random": float(g.ce_before.mean()),
                     "ce_ascended": float(g.ce_after.mean())})
    meeting = [r["step_size"] for r in rows if r["ascended_colour_shift"] <= limit]
    chosen = meeting[0] if meeting else ASCENT_CANDIDATES[-1]
    return {"rule": f"largest step whose mean colour shift after {ASCENT_PROBE_STEPS} steps stays within the 90th "
                    "percentile of random DSP styles, on the first source val scenes; the smallest candidate "
                    "when none does",
            "scenes": f"source val 0..{n_images - 1}", "random_p90_colour_shift": limit, "candidates": rows,
            "chosen": chosen, "met_rule": bool(meeting), "segmentor": segmentor_run.name}


def _built(work: Path, name: str) -> Path:
    """A built model to start from: its run folder under ``work``, else its shipped zoo folder (a
    fresh clone has only the shipped ones, so a later entry can still be built from them)."""
    run = work / name
    if (run / "model.safetensors").is_file():
        return run
    return zoo_path(name)


def _train_entry(e: Entry, work: Path, device: str, log: Callable[[str], None]) -> tuple[Path, dict]:
    """Make (or resume, or reuse) the run folder of ``e``; returns it and the recipe facts for the card."""
    out = work / e.name
    facts: dict[str, Any] = {}
    if e.kind == "train":
        overrides = list(e.overrides)
        if e.choose_step_with:
            choice_path = work / f"{e.name}.ascent_step.json"
            if not choice_path.is_file():
                atomic_write_json(choose_ascent_step(_built(work, e.choose_step_with), device=device), choice_path)
            facts["ascent_step_choice"] = json.loads(choice_path.read_text())
            overrides.append(f"dsp.step_size={facts['ascent_step_choice']['chosen']}")
        cfg = load_config(REPO / e.config, overrides)
        facts["overrides"] = overrides
        if not _done(out, cfg.train.iters):
            resume = (out / "checkpoints" / "last.pt").is_file()
            log(f"zoo: training {e.name} ({cfg.train.mode}, {cfg.train.iters} iterations){' — resuming' if resume else ''}")
            train(cfg, out, resume=resume, overwrite=not resume and out.exists(), device=device, evaluate_at_end=False,
                  log=log)
        facts["iterations"] = cfg.train.iters
    elif e.kind == "sparse":
        mode, iters, lambda_s = e.sparse
        if not _done(out, iters):
            resume = (out / "checkpoints" / "last.pt").is_file()
            log(f"zoo: sparse-training {e.name} ({mode}, {iters} iterations, λ_s {lambda_s})")
            sparse_train(_built(work, e.parent), out, mode, iters, DSP_DIR, lambda_s, device=device, resume=resume,
                         overwrite=not resume and out.exists(), log=log)
        facts.update(iterations=iters, sparse_mode=mode, lambda_s=lambda_s)
    else:
        if not (out / "prune.json").is_file():
            log(f"zoo: pruning {e.name} ({e.prune})")
            t0 = time.perf_counter()
            prune_run(_built(work, e.parent), out, PruneConfig(cost_size=(128, 256), cost_repeats=1, **e.prune),
                      device=device, overwrite=out.exists(), log=log)
            atomic_write_json({"seconds": time.perf_counter() - t0}, out / "cost_zoo_time.json")
        facts.update(iterations=e.prune.get("finetune_iters", 0), prune=e.prune)
    return out, facts


def _wall_seconds(run: Path) -> float | None:
    m = read_metrics(run)
    seconds = float(m["time"].dropna().iloc[-1]) if "time" in m and m["time"].notna().any() else None
    extra = run / "cost_zoo_time.json"
    if extra.is_file():
        seconds = json.loads(extra.read_text())["seconds"]
    return seconds


def machine() -> dict[str, Any]:
    """Where a model was trained and measured."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"system": f"{platform.system()} {platform.machine()}", "cpu": cpu, "threads": torch.get_num_threads(),
            "gpu": gpu, "torch": torch.__version__, "python": platform.python_version()}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def measure(model_dir: Path, scenes: int | None = None, device: str = "cpu", latency: bool = True) -> dict[str, Any]:
    """Per-domain mIoU (with confusion counts) and cost of the model files in ``model_dir``, on the
    first ``scenes`` (default :data:`EVAL_SCENES`) val scenes of every synthetic domain."""
    scenes = EVAL_SCENES if scenes is None else int(scenes)
    dev = select_device(device)
    model = load_model(model_dir, device=dev)
    datasets, source = open_named(["synthetic"], EVAL_SPLIT, EVAL_SIZE)
    result = evaluate(model, datasets, get_protocol("robustnet"), 8, dev, limit=scenes, source=source,
                      checkpoint=str(model_dir / "model.safetensors"))
    domains = {}
    for name, r in result.results.items():
        domains[name] = {"role": "source" if name == source else ("content_shift" if name not in result.targets
                                                                   else "heldout"),
                         "miou": r.miou, "pixel_acc": r.pixel_acc, "images": r.num_images,
                         "confusion": np.asarray(r.confusion).astype(int).tolist()}
    cost = {}
    for h, w in COST_SIZES:
        rep = cost_report(model, (h, w), batches=(1,) if latency else (), warmup=1, repeats=5,
                          checkpoint=model_dir / "model.safetensors")
        cost[f"{h}x{w}"] = {"gflops": rep.gflops, "params": rep.params, "latency_ms_b1": rep.latency_ms.get("batch1")}
    return {"evaluation": {"split": EVAL_SPLIT, "first_scenes_per_domain": scenes, "size": list(EVAL_SIZE),
                           "protocol": "robustnet", "domains": domains,
                           "mean_heldout_miou": result.mean_target_miou, "targets": list(result.targets)},
            "cost": cost}


def precompute_sensitivity(model_dir: Path, device: str = "cpu") -> dict[str, str]:
    """Sensitivity tables next to a dense model: DSP styles, and the oracle probe on held-out renderings."""
    dev = select_device(device)
    model = load_model(model_dir, device=dev)
    dsp = DSP.load(DSP_DIR, device=dev)
    images = spread_images(open_dataset(SOURCE_DOMAIN, "train", EVAL_SIZE), 16)
    probe(model, images, dsp, n_styles=4, seed=0).save(model_dir / "sensitivity_dsp.csv")
    domains = [SOURCE_DOMAIN, *domain_names("heldout")]
    stacked, _ = domain_stack(range(8), domains, "val", EVAL_SIZE)
    res = probe(model, stacked, None, n_styles=len(domains), seed=0)
    SensitivityResult(res.table, {**res.meta, "probe": "oracle", "domains": domains, "split": "val"}).save(
        model_dir / "sensitivity_oracle.csv")
    return {"dsp": "sensitivity_dsp.csv (16 source train images × 4 DSP styles)",
            "oracle": f"sensitivity_oracle.csv (8 val scenes × {len(domains)} domains: {', '.join(domains)})"}


def refresh_sensitivity(names: list[str] | None = None, zoo: Path | None = None, device: str = "cpu",
                        log: Callable[[str], None] = print) -> list[str]:
    """Recompute the precomputed tables of shipped dense models in place (same probe settings as
    :func:`precompute_sensitivity`, on the shipped fp16 files) and update their cards' file hashes —
    for when the table format gains columns (e.g. each unit's partners); the weights are untouched."""
    zoo = ZOO_DIR if zoo is None else zoo
    shipped = cards(zoo)
    done = []
    for name in names or [e.name for e in ENTRIES if e.dense and e.name in shipped]:
        if name not in shipped:
            raise DataError(f"zoo model {name!r} is not shipped in {zoo}")
        if not BY_NAME[name].dense:
            raise DataError(f"zoo model {name!r} is pruned: only dense models ship sensitivity tables")
        folder = zoo / name
        log(f"zoo: recomputing the sensitivity tables of {name}")
        made = precompute_sensitivity(folder, device=device)
        card = shipped[name]
        card["sensitivity"] = made
        for f in sorted(folder.glob("sensitivity_*")):
            card["files"][f.name] = {"sha256": sha256(f), "bytes": f.stat().st_size}
        atomic_write_text(json.dumps(card, indent=2) + "\n", folder / CARD)
        done.append(name)
    write_readme(zoo)  # sizes in the table changed
    return done


def ship_files(name: str, paths: list[Path], zoo: Path | None = None) -> None:
    """Record files written into a shipped model's folder (e.g. precomputed curves) in its card —
    SHA-256 and size — and re-render ``assets/README.md``; a file that is gone is dropped."""
    zoo = ZOO_DIR if zoo is None else zoo
    card = cards(zoo).get(name)
    if card is None:
        raise DataError(f"zoo model {name!r} is not shipped in {zoo}")
    folder = zoo / name
    for path in paths:
        path = Path(path)
        if path.parent.resolve() != folder.resolve():
            raise DataError(f"{path} is not in {folder}")
        if path.is_file():
            card["files"][path.name] = {"sha256": sha256(path), "bytes": path.stat().st_size}
        else:
            card["files"].pop(path.name, None)
    atomic_write_text(json.dumps(card, indent=2) + "\n", folder / CARD)
    write_readme(zoo)


def portable(text: str) -> str:
    """``text`` with this checkout's absolute path removed: paths in shipped configs and cards are
    relative to the repository root (``assets/dsp_tiny``), so a zoo model works from any clone run
    from its root."""
    return text.replace(str(REPO) + "/", "")


def relativize(name: str, zoo: Path | None = None) -> None:
    """Make a shipped model's ``config.yaml`` and card portable (:func:`portable`), card hashes updated."""
    zoo = ZOO_DIR if zoo is None else zoo
    folder = zoo / name
    atomic_write_text(portable((folder / "config.yaml").read_text()), folder / "config.yaml")
    card = json.loads(portable((folder / CARD).read_text()))
    card["files"]["config.yaml"] = {"sha256": sha256(folder / "config.yaml"), "bytes": (folder / "config.yaml").stat().st_size}
    atomic_write_text(json.dumps(card, indent=2) + "\n", folder / CARD)


def export(e: Entry, run: Path, facts: dict[str, Any], device: str = "cpu", log: Callable[[str], None] = print) -> Path:
    """Ship ``run`` as ``assets/zoo/NAME``: fp16 weights (+ plan), config, tables, and a measured card."""
    dst = ZOO_DIR / e.name
    tmp = ZOO_DIR / f".{e.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model = load_model(run)
    save_model(model, tmp / "model.safetensors", fp16=True, extra_meta={"zoo": e.name})
    if (run / "pruning_plan.json").is_file():
        shutil.copy2(run / "pruning_plan.json", tmp / "pruning_plan.json")
    atomic_write_text(portable((run / "config.yaml").read_text()), tmp / "config.yaml")
    log(f"zoo: measuring {e.name} from its fp16 files")
    facts = json.loads(portable(json.dumps(facts)))
    card: dict[str, Any] = {"name": e.name, "what": e.summary, "kind": e.kind, "parent": e.parent,
                            "command": f"python -m npdg zoo build {e.name}", "seed": load_config(run / "config.yaml").train.seed,
                            **facts, "wall_seconds": _wall_seconds(run), "trained_on": machine()}
    card.update(measure(tmp, device=device))
    quick = measure(tmp, scenes=VERIFY_SCENES, device=device, latency=False)["evaluation"]["domains"]
    card["verify"] = {"first_scenes_per_domain": VERIFY_SCENES, "miou": {d: r["miou"] for d, r in quick.items()}}
    if e.dense:
        card["sensitivity"] = precompute_sensitivity(tmp, device=device)
    card["files"] = {p.name: {"sha256": sha256(p), "bytes": p.stat().st_size}
                     for p in sorted(tmp.iterdir()) if p.is_file() and p.name != CARD}
    atomic_write_text(json.dumps(card, indent=2) + "\n", tmp / CARD)
    old = ZOO_DIR / f".{e.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        dst.rename(old)  # the previous version stays complete until the new one is in place
    tmp.rename(dst)
    shutil.rmtree(old, ignore_errors=True)
    return dst


def build(names: list[str] | None = None, work: Path | None = None, device: str = "auto", force: bool = False,
          log: Callable[[str], None] = print) -> list[Path]:
    """Build the named zoo models (default: all) and their parents, in table order; skip shipped ones."""
    work = WORK_DIR if work is None else work
    wanted = set(names or BY_NAME)
    unknown = sorted(wanted - set(BY_NAME))
    if unknown:
        raise DataError(f"unknown zoo model(s) {', '.join(unknown)}; the zoo has {', '.join(BY_NAME)}")
    done = []
    for e in ENTRIES:
        if e.name not in wanted:
            continue
        if (ZOO_DIR / e.name / CARD).is_file() and not force:
            log(f"zoo: {e.name} is shipped (assets/zoo/{e.name}); --force rebuilds it")
            continue
        run, facts = _train_entry(e, work, device, log)
        done.append(export(e, run, facts, device="cpu", log=log))
        write_readme()
    return done


# ------------------------------------------------------------------------------------------ listing
def cards(zoo: Path | None = None) -> dict[str, dict]:
    """Every shipped card (name → card); a corrupt card raises DataError naming the file."""
    zoo = ZOO_DIR if zoo is None else zoo
    out = {}
    for e in ENTRIES:
        path = zoo / e.name / CARD
        if path.is_file():
            try:
                out[e.name] = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise DataError(f"{path} is not valid JSON ({exc}); rebuild it with `python -m npdg zoo build {e.name}`") from None
    return out


def zoo_table(zoo: Path | None = None) -> pd.DataFrame:
    """One row per zoo entry: name, arch, kind, parent, shipped, source / mean held-out / suburb mIoU,
    GFLOPs and params at 128×256, size on disk, what it is."""
    zoo = ZOO_DIR if zoo is None else zoo
    rows = []
    shipped = cards(zoo)
    for e in ENTRIES:
        c = shipped.get(e.name)
        row = {"name": e.name, "kind": e.kind, "parent": e.parent, "shipped": c is not None, "what": e.summary}
        if c is not None:
            d = c["evaluation"]["domains"]
            row.update(source=d.get(SOURCE_DOMAIN, {}).get("miou"), heldout=c["evaluation"]["mean_heldout_miou"],
                       suburb=d.get("suburb", {}).get("miou"), gflops=next(iter(c["cost"].values()))["gflops"],
                       params_m=next(iter(c["cost"].values()))["params"] / 1e6,
                       mb=sum(f["bytes"] for f in c["files"].values()) / 1e6, wall_s=c.get("wall_seconds"))
        rows.append(row)
    return pd.DataFrame(rows)


def zoo_path(name: str, zoo: Path | None = None) -> Path:
    """The folder of a shipped zoo model (DataError naming what is missing)."""
    zoo = ZOO_DIR if zoo is None else zoo
    if name not in BY_NAME:
        raise DataError(f"unknown zoo model {name!r}; the zoo has {', '.join(BY_NAME)}")
    path = zoo / name
    if not (path / "model.safetensors").is_file():
        raise DataError(f"zoo model {name!r} is not shipped ({path / 'model.safetensors'} missing); "
                        f"build it with `python -m npdg zoo build {name}`")
    return path


def write_readme(zoo: Path | None = None) -> Path:
    """``assets/README.md``: the cards as one table, with how they were made and the total size."""
    zoo = ZOO_DIR if zoo is None else zoo
    t = zoo_table(zoo)
    lines = ["# Shipped assets", "",
             "Made by `python -m npdg zoo build` (or `make zoo`) from the table in `npdg/recipes/zoo.py`; every",
             "number below is measured on the shipped fp16 files (first 50 val scenes per domain at 128×256,",
             "mIoU %). Each model folder has its `card.json` with the exact command, parent, seed, wall time,",
             "machine, per-domain confusion counts, costs and SHA-256 of every file.", "",
             "| model | kind | parent | source | mean held-out | suburb | GFLOPs 128×256 | params (M) | MB | train s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in t.itertuples():
        parent = r.parent if isinstance(r.parent, str) else "–"
        if not r.shipped:
            lines.append(f"| {r.name} | {r.kind} | {parent} | not built yet | | | | | | |")
            continue
        lines.append(f"| {r.name} | {r.kind} | {parent} | {100 * r.source:.1f} | {100 * r.heldout:.1f} | "
                     f"{100 * r.suburb:.1f} | {r.gflops:.2f} | {r.params_m:.2f} | {r.mb:.1f} | "
                     f"{'' if r.wall_s is None else f'{r.wall_s:.0f}'} |")
    total = sum(p.stat().st_size for p in zoo.parent.rglob("*") if p.is_file()) / 1e6 if zoo.parent.is_dir() else 0.0
    shipped = t[t["shipped"]] if "shipped" in t else t.iloc[0:0]
    wall = float(shipped["wall_s"].fillna(0).sum()) if "wall_s" in shipped else 0.0
    lines += ["", f"Total size of `assets/`: {total:.1f} MB (budget 180 MB, no file over 30 MB).",
              f"Training wall time of the {len(shipped)} shipped models: {wall / 60:.0f} min in all (see each card's "
              "`trained_on`; exports and measurements add about 2 min per model). These are wall times on a "
              "shared 2-core CPU, not a clean one-go build: a run that was paused while tests ran counts its pause "
              "(the README's zoo table marks the one it inflated most).", ""]
    path = zoo.parent / "README.md"
    atomic_write_text("\n".join(lines), path)
    return path


def verify(names: list[str] | None = None, eval_scenes: int = 0, tolerance: float = 0.005,
           zoo: Path | None = None, log: Callable[[str], None] = print) -> list[str]:
    """Check every shipped file: SHA-256 against the card, the model loads (plan replays); with
    ``eval_scenes`` > 0, re-measure mIoU on that many scenes per domain and compare with the card
    (only when equal to the card's count; tolerance ``tolerance`` absolute). Returns the problems."""
    zoo = ZOO_DIR if zoo is None else zoo
    problems = []
    shipped = cards(zoo)
    for name in names or list(shipped):
        if name not in shipped:
            problems.append(f"{name}: not shipped")
            continue
        card, folder = shipped[name], zoo / name
        for fname, info in card["files"].items():
            path = folder / fname
            if not path.is_file():
                problems.append(f"{name}: {fname} is missing")
            elif sha256(path) != info["sha256"]:
                problems.append(f"{name}: {fname} differs from its card (SHA-256)")
        try:
            load_model(folder)
        except Exception as exc:  # any failure to load is a problem of the asset
            problems.append(f"{name}: does not load ({exc})")
            continue
        if eval_scenes:
            if eval_scenes == card["evaluation"]["first_scenes_per_domain"]:
                want = {d: r["miou"] for d, r in card["evaluation"]["domains"].items()}
            elif eval_scenes == card.get("verify", {}).get("first_scenes_per_domain"):
                want = card["verify"]["miou"]
            else:
                problems.append(f"{name}: the card has mIoU on {EVAL_SCENES} and {VERIFY_SCENES} scenes, not {eval_scenes}")
                continue
            got = measure(folder, scenes=eval_scenes, latency=False)["evaluation"]["domains"]
            for d, r in got.items():
                if abs(r["miou"] - want[d]) > tolerance:
                    problems.append(f"{name}: {d} mIoU {r['miou']:.4f} vs card {want[d]:.4f} (tolerance {tolerance})")
        log(f"zoo: {name} {'ok' if not [p for p in problems if p.startswith(name + ':')] else 'FAILED'}")
    return problems


__all__ = ["ENTRIES", "ZOO_DIR", "Entry", "build", "cards", "choose_ascent_step", "export", "measure",
           "precompute_sensitivity", "refresh_sensitivity", "ship_files", "verify", "write_readme", "zoo_path", "zoo_table"]
