"""Prune page service (npdg.service.pruning): plans by criterion, cost, soft-masked what-ifs."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from test_service_core import make_assets

import npdg.service as svc
from npdg.cost import count_flops, count_params
from npdg.errors import ConfigError
from npdg.pruning.physical import prune_model
from npdg.recipes import zoo
from npdg.service import compare
from npdg.service import pruning as pr
from npdg.service import sensitivity as sens

SIZE = (64, 128)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("prune"))


def test_criteria_plans_and_cost(assets):
    run, dsp_dir = assets
    crit = pr.criteria()
    assert {"npdg", "slimming", "l1norm", "random", "sensitivity"} <= set(crit["name"])
    assert crit.set_index("name").loc["sensitivity", "proxy"]
    plan = pr.select_plan(run, criterion="npdg", rate=0.3)
    assert plan.criterion == "npdg" and plan.num_pruned["filter"] > 0
    plan.candidates["filter"] = -1  # a copy: the cached plan is not affected
    assert pr.select_plan(run, criterion="npdg", rate=0.3).candidates["filter"] > 0
    assert pr.select_plan(run, criterion="random", rate=0.3, seed=1).layers != plan.layers
    table = pr.plan_table(plan)
    assert table["pruned"].sum() == sum(len(lp.pruned) for lp in plan.layers)
    assert ((table["kept"] + table["pruned"]) == table["size"]).all()
    model = svc.shared_model(run)
    cost = pr.plan_cost(run, plan, SIZE)
    pruned = prune_model(model, plan)
    assert cost.params == count_params(pruned) and cost.gflops == pytest.approx(count_flops(pruned, SIZE) / 1e9)
    with pytest.raises(ConfigError, match="sensitivity table"):
        pr.select_plan(run, criterion="sensitivity")
    table_path = sens.probe_dsp(run, dsp_dir, n_images=1, n_styles=2, size=SIZE).save(run / "sens.csv")
    proxy = pr.select_plan(run, criterion="sensitivity", sensitivity=table_path, rate=0.2)
    least = pr.select_plan(run, criterion="sensitivity", sensitivity=table_path, rate=0.2, drop="least_sensitive")
    assert proxy.criterion == "sensitivity" and proxy.layers != least.layers


def test_soft_masked_predictions_and_miou(assets):
    run, _ = assets
    model = svc.shared_model(run)
    before = copy.deepcopy(model.state_dict())
    plan = pr.select_plan(run, rate=0.3)
    preds = pr.masked_predictions(run, plan, index=1, domains=("source", "night"), size=SIZE)
    assert [p.domain for p in preds] == ["source", "night"] and not preds[0].pruned.flags.writeable
    # the dense prediction is the model's own; the pruned one is soft_forward's
    from npdg.pruning.soft import soft_forward
    from npdg.service.data import scene_batch

    x, _ = scene_batch("night", "val", [1], SIZE)
    with torch.no_grad():
        np.testing.assert_array_equal(preds[1].dense, model(x).argmax(1)[0].numpy())
        np.testing.assert_array_equal(preds[1].pruned, soft_forward(model, plan, x).argmax(1)[0].numpy())
    assert 0.0 <= preds[1].changed <= 1.0 and preds[1].pruned_error.tp_count.sum() >= 0
    empty = pr.select_plan(run, rate=0.0)
    same = pr.masked_predictions(run, empty, index=1, domains=("night",), size=SIZE)[0]
    assert same.changed == 0.0
    calls = []
    scores = pr.masked_miou(run, plan, domains=("source", "night", "suburb"), n_images=1, size=SIZE,
                            progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (6, 6)
    assert scores["averaged"].tolist() == [False, True, False]
    dense = compare.evaluate_model(run, domains=("source", "night", "suburb"), n_images=1, size=SIZE)
    np.testing.assert_allclose(scores["dense_miou"], dense.domains["miou"])
    np.testing.assert_allclose(scores["delta"], scores["pruned_miou"] - scores["dense_miou"])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not hasattr(model, "pruning_plan") and not svc.is_busy()


# -------------------------------------------------------------------------------------------------
# curves, per-layer curves, export (background jobs)
# -------------------------------------------------------------------------------------------------
DOMS = ("source", "night")


def test_curve_job_rates_costs_and_persistence(assets, dashboard_cache):
    from npdg.service import jobs

    run, _ = assets
    status = pr.curve_job(run, "npdg", rates=(0.0, 0.3), n_images=1, domains=DOMS)
    assert jobs.wait(status.key, 600).state == "done", jobs.status(status.key).error
    frame = pr.job_frame(status)
    assert list(frame.columns) == pr.CURVE_COLUMNS and len(frame) == 4
    r0, r3 = frame[frame["rate"] == 0.0], frame[frame["rate"] == 0.3]
    np.testing.assert_allclose(r0["miou"], r0["dense_miou"])  # rate 0 is the dense model
    assert r3["gflops"].iloc[0] < r0["gflops"].iloc[0] and r3["params"].iloc[0] < r0["params"].iloc[0]
    assert pr.curve_job(run, "npdg", rates=(0.0, 0.3), n_images=1, domains=DOMS, lookup_only=True).state == "done"
    assert pr.curve_job(run, "l1norm", rates=(0.0, 0.3), n_images=1, domains=DOMS, lookup_only=True) is None
    with pytest.raises(ConfigError):
        pr.curve_job(run, "npdg", rates=(0.0, 1.5))
    with pytest.raises(ConfigError):
        pr.curve_job(run, "bogus", rates=(0.0,))


def test_layer_curves_prune_one_group_at_a_time(assets, dashboard_cache):
    from npdg.service import jobs

    run, _ = assets
    groups = pr.prunable_groups(run)
    assert len(groups) > 5 and (groups["kind"] == "filter").all()
    status = pr.layer_curves_job(run, "l1norm", rates=(0.5,), n_images=1, domains=DOMS)
    assert jobs.wait(status.key, 600).state == "done", jobs.status(status.key).error
    frame = pr.job_frame(status)
    assert list(frame.columns) == pr.LAYER_COLUMNS and len(frame) == len(groups)
    assert (frame["pruned"] > 0).all() and (frame["pruned"] <= frame["size"] // 2 + 1).all()
    assert frame["dense_source"].nunique() == 1


def test_export_equals_the_what_if_and_saves_as_a_run(assets, tmp_path, dashboard_cache, monkeypatch):
    import zipfile

    from npdg.service import jobs

    run, _ = assets
    (run / "config.yaml").write_text("model:\n  arch: deeplabv3plus\n  encoder: resnet18\n  num_classes: 19\n"
                                     "train:\n  mode: erm\n  iters: 10\n")
    status = pr.export_job(run, criterion="l1norm", rate=0.3)
    assert jobs.wait(status.key, 600).state == "done", jobs.status(status.key).error
    folder = pr.export_dir(status)
    assert all((folder / f).is_file() for f in pr.EXPORT_FILES)
    names = zipfile.ZipFile(__import__("io").BytesIO(pr.export_zip(folder))).namelist()
    assert names == list(pr.EXPORT_FILES)
    # the soft-masked what-if and the physically pruned model give the same mIoU on the same scenes
    # — both ways the what-if computes it: soft masks on the shared model, or a pruned copy of it
    plan = pr.select_plan(run, criterion="l1norm", rate=0.3)
    physical = compare.evaluate_model(folder, domains=DOMS, n_images=2, size=pr.DEFAULT_SIZE).domains
    model = svc.shared_model(run)
    x = torch.rand(2, 3, *SIZE)
    logits = {}
    for way, min_saving in (("soft", 2.0), ("copy", 0.0)):
        monkeypatch.setattr(pr, "PHYSICAL_MIN_SAVING", min_saving)
        svc.clear_caches()
        what_if = pr.masked_miou(run, plan, domains=DOMS, n_images=2)
        np.testing.assert_allclose(what_if["pruned_miou"].to_numpy(), physical["miou"].to_numpy(), atol=1e-4)
        logits[way] = pr.soft_logits(model, plan, x)
        assert (pr._pruned_copy(model, plan) is None) == (way == "soft")
    torch.testing.assert_close(logits["soft"], logits["copy"], atol=1e-4, rtol=1e-4)
    # a one-batch what-if in bf16 uses soft masks rather than building a copy; in fp32 it builds one
    for precision in pr.PRECISIONS:
        svc.clear_caches()
        pr.masked_miou(run, plan, domains=DOMS, n_images=2, precision=precision)
        built = pr._pruned_copy(svc.shared_model(run), plan, build=False) is not None
        assert built == (pr.precision_used(precision) == "fp32"), precision
    saved = pr.save_as_run(folder, "pruned-l1", root=tmp_path / "runs")
    assert (saved / "model.safetensors").is_file() and (saved / ".npdg-run").is_file()
    with pytest.raises(ConfigError, match="already exists"):
        pr.save_as_run(folder, "pruned-l1", root=tmp_path / "runs")
    for bad in ("", "../x", ".hidden", "a/b"):
        with pytest.raises(ConfigError):
            pr.save_as_run(folder, bad, root=tmp_path / "runs")
    with pytest.raises(ConfigError, match="proxy"):
        pr.export_job(run, criterion="sensitivity", rate=0.3)


def test_finetuning_runs_in_a_separate_process_with_progress_and_can_be_stopped(assets, tmp_path, dashboard_cache):
    from npdg.service import jobs

    run, _ = assets
    (run / "config.yaml").write_text("model:\n  arch: deeplabv3plus\n  encoder: resnet18\n  num_classes: 19\n"
                                     "data:\n  size: [64, 128]\ntrain:\n  mode: erm\n  iters: 10\n  batch_size: 2\n")
    settings = dict(criterion="l1norm", rate=0.3)
    cmd = pr.finetune_command(run, tmp_path / "x", iters=3, **settings)
    assert cmd[1:4] == ["-m", "npdg", "prune"] and "--sparse-iters" in cmd and cmd[cmd.index("--finetune-iters") + 1] == "3"
    seen = []
    status = pr.finetune_job(run, "ft", iters=3, threads=1, root=tmp_path, **settings)
    while jobs.status(status.key).state == "running":
        seen.append(jobs.status(status.key).done)
        import time

        time.sleep(0.2)
    final = jobs.status(status.key)
    assert final.state == "done", final.error
    folder = pr.finetune_dir(final)
    assert folder == tmp_path / "ft" and (folder / "model.safetensors").is_file() and (folder / "pruning_plan.json").is_file()
    assert final.total == 3 and max(seen) >= 1  # the progress bar of the child process reached the page
    with pytest.raises(ConfigError, match="already exists"):
        pr.finetune_job(run, "ft", iters=3, threads=1, root=tmp_path, **settings)
    with pytest.raises(ConfigError, match="threads"):
        pr.finetune_job(run, "ft2", iters=3, threads=999, root=tmp_path, **settings)
    long = pr.finetune_job(run, "ft-long", iters=5000, threads=1, root=tmp_path, **settings)
    import time

    deadline = time.time() + 120
    while not pr.stop_finetune(long) and time.time() < deadline:
        time.sleep(0.2)
    stopped = jobs.wait(long.key, 120)
    assert stopped.state == "failed" and "exited with" in stopped.error


def test_a_single_flight_cache_computes_a_key_once_for_concurrent_callers():
    import threading
    import time

    from npdg.service import LRU

    cache, calls = LRU(4, single_flight=True), []

    def slow():
        calls.append(1)
        time.sleep(0.2)
        return len(calls)

    out = []
    threads = [threading.Thread(target=lambda: out.append(cache.get("k", slow))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == [1, 1, 1, 1] and calls == [1] and "k" in cache

    def broken():
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        cache.get("x", broken)
    assert cache.get("x", lambda: 7) == 7  # a failed flight leaves no trace


def test_fast_precision_is_bf16_only_where_native_and_stays_within_a_point(assets, monkeypatch):
    """``fast`` computes in bf16 exactly where the hardware runs it natively, ``exact`` always in fp32;
    the two are cached apart, and on the tiny model they agree on the source and held-out means to
    well under a point (the zoo's figures: docs/dashboard.md §4)."""
    from npdg.evaluate import amp_context, native_bf16

    run, _ = assets
    assert amp_context("cpu", "auto")[1] == "off"  # CPU numbers stay exact unless bf16 is asked for
    assert amp_context("cpu", "fp16")[1] == "off"
    assert amp_context("cpu", "bf16")[1] == ("bf16" if native_bf16("cpu") else "off")
    assert pr.precision_used("exact") == "fp32"
    assert pr.precision_used("fast") == ("bf16" if native_bf16("cpu") else "fp32")
    with pytest.raises(ConfigError, match="precision"):
        pr.masked_miou(run, None, n_images=1, precision="half")
    plan = pr.select_plan(run, criterion="l1norm", rate=0.3)
    exact = pr.masked_miou(run, plan, domains=DOMS, n_images=2)
    fast = pr.masked_miou(run, plan, domains=DOMS, n_images=2, precision="fast")
    for col in ("dense_miou", "pruned_miou"):
        for rows in (fast["role"] == "source", fast["averaged"]):
            assert abs(fast[rows][col].mean() - exact[rows][col].mean()) < 0.01
    # without native bf16, "fast" is fp32: the very same numbers
    monkeypatch.setattr("npdg.evaluate.native_bf16", lambda device: False)
    svc.clear_caches()
    assert pr.precision_used("fast") == "fp32"
    again = pr.masked_miou(run, plan, domains=DOMS, n_images=2, precision="fast")
    np.testing.assert_array_equal(again["pruned_miou"].to_numpy(), exact["pruned_miou"].to_numpy())


def test_a_plan_digest_is_computed_once_and_names_its_structure(assets):
    from npdg.pruning.cost import plan_hash

    run, _ = assets
    plan = pr.select_plan(run, criterion="l1norm", rate=0.3)
    assert "digest" not in vars(plan)
    first = plan_hash(plan)
    assert vars(plan)["digest"] == first == plan_hash(plan)  # memoized on the (immutable) plan
    import hashlib

    assert first == hashlib.sha1(plan.to_json().encode()).hexdigest()
    assert plan_hash(None) == "dense"


# -------------------------------------------------------------------------------------------------
# what-ifs shipped with a model: a lookup that gives the computed numbers, only for that model file
# -------------------------------------------------------------------------------------------------
def test_shipped_what_if_is_the_computed_one_and_only_for_its_model(assets, tmp_path):
    import json
    import shutil

    run = tmp_path / "run"
    shutil.copytree(assets[0], run)
    table = pr.build_what_if_table(run, rates=(0.0, 0.3), n_images=(1,))
    assert table["criteria"] == ["l1norm", "npdg", "random", "slimming"]  # no saved sensitivity table here
    assert len(table["plans"]) == 4 and table["model_sha256"] == pr.model_digest(run)
    plan = pr.select_plan(run, criterion="l1norm", rate=0.3)
    computed = pr.masked_miou(run, plan, n_images=1, precision="exact")
    assert computed.attrs == {"precision": "fp32", "precomputed": False}
    (run / pr.SHIPPED_WHAT_IF).write_text(json.dumps(table))
    svc.clear_caches()
    for precision in pr.PRECISIONS:  # fp32 numbers serve both precisions, and say so
        hit = pr.masked_miou(run, plan, n_images=1, precision=precision)
        assert hit.attrs == {"precision": "fp32", "precomputed": True}
        np.testing.assert_allclose(hit[["dense_miou", "pruned_miou"]], computed[["dense_miou", "pruned_miou"]])
        assert hit["domain"].tolist() == computed["domain"].tolist()
    assert pr.masked_miou(run, pr.select_plan(run, criterion="npdg", rate=0.0), n_images=1).attrs["precomputed"]
    # another plan, scene count, scene size or domain set: computed
    assert not pr.masked_miou(run, pr.select_plan(run, criterion="l1norm", rate=0.2), n_images=1).attrs["precomputed"]
    assert not pr.masked_miou(run, plan, n_images=2).attrs["precomputed"]
    assert not pr.masked_miou(run, plan, n_images=1, size=SIZE).attrs["precomputed"]
    assert not pr.masked_miou(run, plan, n_images=1, domains=("source", "night")).attrs["precomputed"]
    # a damaged table, or a table of another model file, is ignored
    for bad in ("{not json", json.dumps({**table, "model_sha256": "0" * 64}), json.dumps({**table, "scores": []})):
        (run / pr.SHIPPED_WHAT_IF).write_text(bad)
        svc.clear_caches()
        assert not pr.masked_miou(run, plan, n_images=1).attrs["precomputed"]


def test_what_if_job_computes_the_masked_miou_and_a_newer_rate_supersedes(monkeypatch):
    """The Prune page's background what-if: the frame masked_miou gives, computed once, ready
    afterwards without a forward; of two requests of one session the older, still waiting for the
    engine, is dropped (tests/test_service_jobs.py has the lane rules)."""
    from npdg.service import engine, jobs

    model = zoo.ZOO_DIR / "r18-npdg-sparse"
    if not (model / "model.safetensors").is_file():
        pytest.skip("zoo r18-npdg-sparse not shipped")
    monkeypatch.setattr(pr, "DOMAIN_NAMES", ("source", "fog"))
    p1 = pr.select_plan(model, criterion="l1norm", rate=0.15, max_layer_ratio=0.6)
    p2 = pr.select_plan(model, criterion="l1norm", rate=0.2, max_layer_ratio=0.6)
    assert pr.what_if_ready(model, p1, n_images=1) is None
    lane = ("what-if", "test-session")
    with engine():  # both wait for the engine, as behind another session's forward
        s1 = pr.what_if_job(model, p1, n_images=1, lane=lane)
        s2 = pr.what_if_job(model, p2, n_images=1, lane=lane)
        assert s1.state == s2.state == "running"
    jobs.wait_all(timeout=300)
    assert jobs.status(s1.key) is None and pr.what_if_ready(model, p1, n_images=1) is None  # dropped
    frame = pr.job_frame(jobs.status(s2.key))
    expected = pr.masked_miou(model, p2, domains=("source", "fog"), n_images=1)
    pd.testing.assert_frame_equal(frame, expected)
    pd.testing.assert_frame_equal(pr.what_if_ready(model, p2, n_images=1), expected)
