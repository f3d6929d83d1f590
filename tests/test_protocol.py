"""bench/protocol.py's row grammar and per-stage summary (the runs themselves are bench-length)."""

from __future__ import annotations

import pytest
import torch
from conftest import bench_module


@pytest.fixture(scope="module")
def protocol():
    return bench_module("protocol")


def test_rows_name_a_criterion_and_at_most_one_varied_setting(protocol):
    assert protocol.parse_row("npdg") == ("npdg", None, None)
    assert protocol.parse_row("npdg_unary") == ("npdg_unary", None, None)
    assert protocol.parse_row("npdg_lam0.2") == ("npdg", 0.2, None)
    assert protocol.parse_row("npdg_r0.1") == ("npdg", None, 0.1)
    assert protocol.parse_row("l1norm") == ("l1norm", None, None)
    for bad in ("dsp", "npdg_lam2", "slimming_r0.2", "npdg_lam0.2_r0.1", "npdg_r1.5", "bogus"):
        with pytest.raises(ValueError):
            protocol.parse_row(bad)
    assert all(protocol.parse_row(r) for r in protocol.ABLATION_ROWS + protocol.PRUNE_ROWS)


def test_layers_map_to_stages(protocol):
    assert protocol.stage_of("net.encoder.bn1") == "stem"
    assert protocol.stage_of("net.encoder.layer2.0.bn1") == "layer2"
    assert protocol.stage_of("net.encoder.block3.1.attn") == "block3"
    assert protocol.stage_of("net.decoder.aspp.0.convs.0.2") == "decoder"
    assert protocol.stage_of("encoder.layer4.1.bn2") == "layer4"


def test_prune_commands_keep_the_budget_and_pass_the_varied_setting(protocol, monkeypatch, tmp_path):
    import argparse

    seen = []
    monkeypatch.setattr(protocol, "run", lambda cmd: seen.append(cmd) or {"wall_s": 0.0, "cpu_s": 0.0})
    args = argparse.Namespace(rate=0.3, finetune_iters=200, sparse_iters=200, lambda_s="auto", dsp="assets/dsp_tiny",
                              device="cpu", units="heads")

    def cmd(row: str) -> dict[str, str]:
        seen.clear()
        protocol.prune(row, 0, args, tmp_path / row, tmp_path / "base")
        flags = seen[0][seen[0].index("prune") + 1:]
        return {flags[i]: flags[i + 1] if i + 1 < len(flags) and not flags[i + 1].startswith("--") else ""
                for i in range(len(flags)) if flags[i].startswith("--")}

    npdg = cmd("npdg")
    assert (npdg["--criterion"], npdg["--sparse-iters"], npdg["--finetune-iters"], npdg["--units"]) == \
        ("npdg", "200", "200", "heads") and "--lam" not in npdg
    assert float(npdg["--lambda-s"]) == 0.05 * 60 / 200
    l1 = cmd("l1norm")  # no sparse phase: its iterations go to the fine-tune (equal budget)
    assert l1["--finetune-iters"] == "400" and "--sparse-iters" not in l1
    lam = cmd("npdg_lam0.6")
    assert lam["--lam"] == "0.6" and lam["--sparse-iters"] == "200"
    r = cmd("npdg_r0.1")  # the npdg row's sparse model at another rate: only the fine-tune is new
    assert r["--rate"] == "0.1" and "--sparse-iters" not in r and r["--finetune-iters"] == "200"
    assert cmd("npdg_unary")["--criterion"] == "npdg_unary"


def test_table_gives_mean_and_sample_std_over_seeds_and_the_latency(protocol, tmp_path):
    import argparse

    def result(seed: int, level: float, latency: float) -> dict:
        miou = dict.fromkeys(("source", *protocol.HELDOUT, "suburb", *protocol.CORRUPT), level)
        return {"row": "npdg", "seed": seed, "miou": miou, "heldout_mean": level, "corrupt_mean": level,
                "gflops": 36.9, "params": 7.6e6, "latency_ms_b1": latency, "gamma_abs_std": 0.07}

    args = argparse.Namespace(results=tmp_path, out=tmp_path, seeds=[0, 1, 2], boot=10)
    text = protocol.table({"npdg": [result(0, 0.12, 400.0), result(1, 0.13, 420.0), result(2, 0.14, 440.0)]}, args)
    header, _, row = text.splitlines()
    assert "CPU ms (b1)" in header
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:3] == ["npdg", "3", "13.0 ± 1.0"]  # sample std (ddof 1) of 12, 13, 14
    assert "420 ± 20" in cells
    assert cells[2 + 1 + len(protocol.HELDOUT)] == "13.0 ± 1.0"  # the held-out mean
    assert cells[3 + 1 + len(protocol.HELDOUT)] == "–"  # no dsp_budget runs: no interval


def test_corruption_table_gives_each_corruption_domain_over_seeds(protocol):
    def result(seed: int, jpeg: float) -> dict:
        miou = dict.fromkeys(protocol.CORRUPT, 0.2) | {"corrupt_jpeg": jpeg}
        return {"row": "dsp", "seed": seed, "miou": miou, "corrupt_mean": 0.2 + (jpeg - 0.2) / len(protocol.CORRUPT)}

    header, _, row = protocol.corruption_table({"dsp": [result(0, 0.30), result(1, 0.34)], "npdg": []}).splitlines()
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert header.split("|")[3].strip() == "jpeg" and cells[:4] == ["dsp", "2", "32.0 ± 2.8", "20.0 ± 0.0"]
    assert cells[-1] == "22.4 ± 0.6"  # the five distinct: (0.30 + 4 × 0.2) / 5 and (0.34 + 0.8) / 5
    assert protocol.corruption_table({"npdg": []}) == ""


def _prune_command(protocol, monkeypatch, tmp_path, row: str) -> list[str]:
    """The ``npdg prune`` command the protocol runs for ``row`` (seed 0, the cpu preset's budget)."""
    import argparse

    seen = []
    monkeypatch.setattr(protocol, "run", lambda cmd: seen.append(cmd) or {"wall_s": 0.0, "cpu_s": 0.0})
    args = argparse.Namespace(rate=0.3, finetune_iters=200, sparse_iters=200, lambda_s="auto", dsp="assets/dsp_tiny",
                              device="cpu", units="all")
    protocol.prune(row, 0, args, tmp_path / "r", tmp_path / "base")
    return seen[0]


def test_lambda_s_rows_scale_the_rule_for_a_sparse_criterion_only(protocol, monkeypatch, tmp_path):

    assert protocol.parse_row("npdg_ls0.25") == ("npdg", None, None)
    assert protocol.lambda_scale("slimming_ls0.1") == 0.1 and protocol.lambda_scale("npdg") == 1.0
    for bad in ("l1norm_ls0.5", "random_ls0.5", "npdg_r0.1_ls0.5", "npdg_lam0.2_ls0.5", "npdg_ls0", "npdg_ls20"):
        with pytest.raises(ValueError):
            protocol.parse_row(bad)
    assert all(protocol.parse_row(r) for r in protocol.LS_ROWS)
    flags = _prune_command(protocol, monkeypatch, tmp_path, "slimming_ls0.1")
    assert flags[flags.index("--criterion") + 1] == "slimming"
    assert float(flags[flags.index("--lambda-s") + 1]) == pytest.approx(0.1 * 0.05 * 60 / 200)


def test_probe_rows_pass_the_refresh_count_or_the_probe_size_of_npdg_alone(protocol, monkeypatch, tmp_path):

    assert all(protocol.parse_row(r) == ("npdg", None, None) for r in protocol.PROBE_ROWS)
    for bad in ("slimming_rf1", "l1norm_pi32", "npdg_rf4_pi32", "npdg_ls0.25_rf1", "npdg_r0.1_rf1", "npdg_pi0"):
        with pytest.raises(ValueError):
            protocol.parse_row(bad)
    assert protocol.probe_flags("npdg") == [] and protocol.probe_flags("npdg_rf16") == ["--refresh", "16"]
    flags = _prune_command(protocol, monkeypatch, tmp_path, "npdg_pi32")
    assert flags[flags.index("--probe-images") + 1] == "32" and "--refresh" not in flags
    assert flags[flags.index("--criterion") + 1] == "npdg" and "--sparse-iters" in flags


def test_an_interrupted_base_is_resumed_before_a_prune_row_uses_it(protocol, monkeypatch, tmp_path):
    """The loop refreshes model.safetensors at every checkpoint: a base saved at iteration 550 of 800
    is not finished, so base_of trains it on (do_row) instead of pruning a half-trained model."""
    import argparse
    import json

    from safetensors.torch import save_file

    args = argparse.Namespace(out=tmp_path / "runs", results=tmp_path / "res", base_iters=800, sparse_iters=200)
    (args.out / "dsp_s0").mkdir(parents=True)
    args.results.mkdir()
    (args.results / "dsp_s0.json").write_text(json.dumps({"row": "dsp"}))
    made = []
    monkeypatch.setattr(protocol, "do_row", lambda row, seed, a, rebuild=False: made.append((row, rebuild)))
    for it, expect in (("550", [("dsp", True)]), ("800", [])):
        made.clear()
        save_file({"w": torch.zeros(1)}, str(args.out / "dsp_s0" / "model.safetensors"), metadata={"iter": it})
        assert protocol.base_of("npdg", 0, args) == args.out / "dsp_s0" and made == expect
    assert protocol.trained_to(tmp_path / "nowhere") is None


def test_a_pruned_but_unscored_run_is_scored_not_made_again(protocol, monkeypatch, tmp_path):
    """An interrupted protocol that had pruned a row but not scored it: the next call reuses the run
    when its recorded settings are the row's, and otherwise re-prunes it after removing only its own
    scenes file (npdg prune --overwrite refuses a folder holding files npdg did not write)."""
    import argparse
    import json

    from npdg.config import Config, PruneConfig, dump_config

    args = argparse.Namespace(rate=0.3, finetune_iters=200, sparse_iters=200, lambda_s="auto", dsp="assets/dsp_tiny",
                              device="cpu", units="all")
    out, base = tmp_path / "npdg_s0", tmp_path / "dsp_s0"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"x")
    (out / protocol.SCENES).write_bytes(b"x")
    (out / "prune.json").write_text(json.dumps({"source": str(base)}))
    made = PruneConfig(criterion="npdg", rate=0.3, sparse_iters=200, finetune_iters=200, seed=0, units="all",
                       lambda_s=0.05 * 60 / 200, dsp="assets/dsp_tiny")  # what npdg prune records for that row
    dump_config(Config(prune=made), out / "config.yaml")
    seen = []
    monkeypatch.setattr(protocol, "run", lambda cmd: seen.append(cmd) or {"wall_s": 1.0, "cpu_s": 2.0})
    assert protocol.prune("npdg", 0, args, out, base) == {"wall_s": None, "cpu_s": None} and seen == []
    assert (out / protocol.SCENES).is_file()
    protocol.prune("npdg_rf1", 0, args, out, base)  # another setting: made again, our scenes file gone
    assert len(seen) == 1 and not (out / protocol.SCENES).exists()
    assert not protocol.finished_as(out, [*seen[0][:seen[0].index("--run") + 1], str(tmp_path / "other"),
                                          *seen[0][seen[0].index("--run") + 2:]])


def test_bootstrap_intervals_come_from_the_kept_scenes_without_the_run_folders(protocol, tmp_path):
    """Each run's per-scene confusions are copied next to its JSON, so the table's intervals survive a
    fresh machine (the git-ignored run folders gone)."""
    import argparse

    import numpy as np

    rng = np.random.default_rng(0)
    doms = ("source", *protocol.HELDOUT, "suburb", *protocol.CORRUPT)
    results, runs = tmp_path / "results", tmp_path / "runs"

    def confusions(hit: float) -> dict:
        eye = np.eye(19, dtype=np.int64) * 50
        out = {}
        for d in doms:
            cm = rng.integers(0, int(50 * (1 - hit)) + 1, size=(20, 19, 19)) + eye
            out[d] = cm
        return out

    for row, hit in (("dsp_budget", 0.9), ("npdg", 0.5)):
        run = runs / f"{row}_s0"
        run.mkdir(parents=True)
        np.savez_compressed(run / "scenes.npz", **confusions(hit))
        results.mkdir(exist_ok=True)
        protocol._keep_scenes(run, results / f"{row}_s0.json".replace(".json", ".npz"))
    import shutil

    shutil.rmtree(runs)
    args = argparse.Namespace(results=results, out=runs, seeds=[0], boot=50)
    ci = protocol._ci("npdg", [{"seed": 0}], [{"seed": 0}], protocol.HELDOUT, args)
    diff, low, high = (float(v) for v in ci.replace("[", " ").replace("]", " ").replace(",", " ").split())
    assert diff < 0 and low <= diff <= high  # the worse row's interval, from the kept copies
    partial = protocol._ci("npdg", [{"seed": 0}, {"seed": 1}], [{"seed": 0}, {"seed": 1}], protocol.HELDOUT, args)
    assert partial == ci + " (seed 0)"  # seed 1's scenes are not here: the interval says which seeds it has


def test_gamma_plot_draws_one_point_per_run(protocol, tmp_path):
    import argparse

    def result(std: float, held: float) -> dict:
        return {"gamma_abs_std": std, "heldout_mean": held, "miou": {"source": 0.3}}

    args = argparse.Namespace(preset="cpu")
    assert protocol.gamma_plot({"dsp": [result(0.01, 0.13)]}, args, tmp_path / "g.png") is None  # one point: no plot
    path = protocol.gamma_plot({"dsp": [result(0.01, 0.13)], "npdg": [result(0.07, 0.12), result(0.08, 0.125)]},
                               args, tmp_path / "g.png")
    assert path.is_file() and path.stat().st_size > 5000 and not list(tmp_path.glob("*.tmp.png"))


def test_sparse_phase_table_sets_the_model_before_pruning_against_the_final_one(protocol, tmp_path):
    import argparse
    import json

    def result(held: float, src: float, **extra) -> dict:
        return {"heldout_mean": held, "corrupt_mean": held, "miou": {"source": src}, "gamma_abs_std": 0.05, **extra}

    for name, r in (("dsp_budget_s0", result(0.15, 0.36)), ("npdg_s0", result(0.12, 0.24, lambda_s=0.015)),
                    ("npdg_s0.sparse", result(0.14, 0.30)), ("l1norm_s0", result(0.14, 0.34))):
        (tmp_path / f"{name}.json").write_text(json.dumps(r))
    args = argparse.Namespace(results=tmp_path, out=tmp_path / "runs")
    text = protocol.sparse_phase(["dsp_budget", "npdg", "l1norm", "slimming"], [0], args)
    rows = text.splitlines()[2:]
    assert len(rows) == 1  # l1norm has no sparse phase, slimming no run, dsp_budget is a training row
    assert rows[0].startswith("| npdg | 0 | 0.015 | 14.0 → 12.0 | 30.0 → 24.0 |") and rows[0].endswith("| 15.0 / 36.0 |")


def test_schedule_sets_each_pruned_row_against_the_dense_model_of_its_own_schedule(tmp_path):
    import json

    schedule = bench_module("schedule")

    def result(row: str, held: float, sparse: int, finetune: int) -> dict:
        miou = {"source": held + 0.2}
        return {"row": row, "seed": 0, "miou": miou, "heldout_mean": held, "corrupt_mean": held + 0.1,
                "gflops": 36.9, "gamma_abs_std": 0.07,
                "settings": {"base_iters": 800, "sparse_iters": sparse, "finetune_iters": finetune}}

    short, long = tmp_path / "short", tmp_path / "long"
    for d, its, budget, npdg in ((short, 200, 0.15, 0.13), (long, 800, 0.165, 0.155)):
        d.mkdir()
        (d / "dsp_budget_s0.json").write_text(json.dumps(result("dsp_budget", budget, its, its)))
        (d / "npdg_s0.json").write_text(json.dumps(result("npdg", npdg, its, its)))
    found = schedule.load([long, short], ["dsp_budget", "npdg"], [0])
    lines = schedule.table(found, boot=10).splitlines()[2:]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert [c[:2] for c in cells] == [["dsp_budget", "400"], ["dsp_budget", "1600"], ["npdg", "400"], ["npdg", "1600"]]
    assert cells[2][5] == "-2.0 (scenes not kept)" and cells[3][5] == "-1.0 (scenes not kept)"  # vs its own budget
    assert cells[0][5] == "–"
    assert schedule.plot(found, tmp_path / "s.png", "t").stat().st_size > 5000
    assert schedule.plot(found[:1], tmp_path / "one.png", "t") is None  # one schedule: nothing to draw
    (short / "npdg_s0.json").write_text(json.dumps(result("npdg", 0.13, 200, 100)))
    (short / "npdg_s1.json").write_text(json.dumps(result("npdg", 0.13, 200, 200)))
    with pytest.raises(SystemExit, match="different schedules"):
        schedule.load([short], ["npdg"], [0, 1])


def test_reference_row_sets_the_intervals_against_another_row(protocol, tmp_path):
    """``--reference slimming``: the Δ column is npdg − slimming, computed from the kept scenes, and
    dsp_budget (no longer the reference) gets an interval of its own."""
    import argparse

    import numpy as np

    rng = np.random.default_rng(1)
    doms = ("source", *protocol.HELDOUT, "suburb", *protocol.CORRUPT)
    eye = np.eye(19, dtype=np.int64) * 50

    def keep(row: str, noise: int) -> dict:
        np.savez_compressed(tmp_path / f"{row}_s0.npz",
                            **{d: rng.integers(0, noise + 1, size=(20, 19, 19)) + eye for d in doms})
        miou = dict.fromkeys(doms, 0.1)
        return {"row": row, "seed": 0, "miou": miou, "heldout_mean": 0.1, "corrupt_mean": 0.1, "gflops": 1.0,
                "params": 1e6, "gamma_abs_std": 0.05}

    results = {row: [keep(row, noise)] for row, noise in (("dsp_budget", 2), ("npdg", 25), ("slimming", 25))}
    args = argparse.Namespace(results=tmp_path, out=tmp_path / "runs", seeds=[0], boot=50, reference="slimming")
    header, _, *rows = protocol.table(results, args).splitlines()
    assert "Δ vs slimming [95 % CI]" in header and "dsp_budget [95" not in header
    at = 3 + 1 + len(protocol.HELDOUT)
    cells = {r.split("|")[1].strip(): [c.strip() for c in r.strip("|").split("|")] for r in rows}
    assert cells["slimming"][at] == "–"  # the reference itself
    budget = float(cells["dsp_budget"][at].split()[0])
    npdg = float(cells["npdg"][at].split()[0])
    assert budget > 5 and abs(npdg) < budget  # the clean model beats slimming by far; npdg about ties it
    assert protocol.reference_of(argparse.Namespace()) == "dsp_budget"
