"""The mechanism test (npdg.pruning.mechanism): mask by sensitivity, re-estimate BN, score."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import randomize_gamma, tiny_dsp
from torch import nn

from npdg.data.specs import is_averaged
from npdg.data.synthetic import DOMAINS, SOURCE_DOMAIN, SyntheticDataset
from npdg.errors import ConfigError
from npdg.evaluate import evaluate
from npdg.models import build_model
from npdg.pruning import mechanism
from npdg.sensitivity import probe

SIZE = (64, 128)
DOMS = ("source", "night", "fog")


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = randomize_gamma(build_model("deeplabv3plus", "resnet18", 19).eval(), seed=0, stats=True)
    dsp = tiny_dsp(0)
    images = torch.stack([SyntheticDataset("source", "train", SIZE)[i]["image"] for i in (0, 5, 9, 13)])
    table = probe(model, images[:2], dsp=dsp, n_styles=2, batch_size=2).table
    return model, dsp, images, {"dsp": table}


def _score(model: nn.Module) -> pd.DataFrame:
    datasets = {d: SyntheticDataset(d, "test", SIZE, length=1) for d in DOMS}
    result = evaluate(model, datasets, source=SOURCE_DOMAIN)
    return pd.DataFrame([{"domain": d, "role": DOMAINS[d].role, "averaged": is_averaged(d, SOURCE_DOMAIN),
                          "miou": r.miou} for d, r in result.results.items()])


def _masked_units(plan) -> set[tuple[str, int]]:
    return {(lp.name, int(u)) for lp in plan.layers for u in lp.pruned}


def test_selections_mask_the_ends_of_their_column(setup):
    model, _, _, tables = setup
    table = tables["dsp"]
    by_unit = table.set_index(["layer", "unit"])
    # a filter of a coupling group is ranked by its members' mean score: compare within layers that
    # are a group of their own, and on means over the whole model
    layers_of_group = table.groupby("group")["layer"].nunique()
    alone = set(table[table["group"].map(layers_of_group) == 1]["layer"])
    for selection, (column, end) in [(s, c) for s, c in mechanism.SELECTIONS.items() if c and s != "most_oracle"]:
        plan = mechanism.mask_plan(model, selection, 0.05, tables, round_to=1)
        masked = _masked_units(plan)
        assert masked
        keys = [k for k in masked if k in by_unit.index]
        inside_all = by_unit.loc[keys][column]
        outside_all = by_unit.drop(keys)[column]
        assert (inside_all.mean() > outside_all.mean()) == (end == "most")
        for layer in {name for name, _ in masked} & alone:
            values = by_unit.loc[layer][column]
            inside = values[[u for n, u in masked if n == layer]]
            outside = values.drop(inside.index)
            if end == "most":
                assert inside.min() >= outside.max() - 1e-12
            else:
                assert inside.max() <= outside.min() + 1e-12
    most = _masked_units(mechanism.mask_plan(model, "most_combined", 0.05, tables, round_to=1))
    least = _masked_units(mechanism.mask_plan(model, "least_combined", 0.05, tables, round_to=1))
    assert not most & least
    p0, p1 = (mechanism.mask_plan(model, "random", 0.05, tables, seed=s, round_to=1) for s in (0, 1))
    assert _masked_units(p0) != _masked_units(p1) and p0.num_pruned == p1.num_pruned  # as many group channels


def test_bad_requests_are_config_errors(setup):
    model, _, images, tables = setup
    with pytest.raises(ConfigError, match="oracle"):
        mechanism.mask_plan(model, "most_oracle", 0.1, tables)
    with pytest.raises(ConfigError, match="unknown selection"):
        mechanism.mask_plan(model, "most_gamma", 0.1, tables)
    for bad in ([0.0], [1.0], [float("nan")], [], [True]):
        with pytest.raises(ConfigError):
            mechanism.check_rates(bad)
    with pytest.raises(ConfigError, match="calibration"):
        mechanism.mechanism_test(model, tables, [], _score, rates=[0.1])
    with pytest.raises(ConfigError):
        mechanism.calibration_batches(images[0], None)


def test_bn_re_estimation_gives_the_batch_statistics_and_restores_the_settings():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.3), nn.Dropout(0.5), nn.ReLU(),
                        nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2)).eval()
    batches = [torch.rand(3, 3, 8, 8) for _ in range(4)]
    assert mechanism.recalibrate_bn(net, batches) == 12
    with torch.no_grad():
        feats = torch.cat([net[0](x) for x in batches])
    torch.testing.assert_close(net[1].running_mean, feats.mean((0, 2, 3)), atol=1e-5, rtol=1e-5)
    # equal-sized batches: the cumulative average of the per-batch unbiased variances
    var = torch.stack([net[0](x).detach().var((0, 2, 3), unbiased=True) for x in batches]).mean(0)
    torch.testing.assert_close(net[1].running_var, var, atol=1e-5, rtol=1e-5)
    assert net[1].momentum == 0.3 and net[5].momentum == 0.1
    assert not any(m.training for m in net.modules())
    # dropout stayed off: re-estimating twice gives the same statistics
    second = net[5].running_mean.clone()
    mechanism.recalibrate_bn(net, batches)
    torch.testing.assert_close(net[5].running_mean, second)


def test_the_mechanism_test_masks_copies_and_reports_deltas(setup):
    model, dsp, images, tables = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calib = mechanism.calibration_batches(images, dsp, batch_size=2)
    assert [b.shape[0] for b in calib] == [4, 4]  # clean + stylized
    torch.testing.assert_close(calib[0][:2], images[:2])
    calls = []
    frame = mechanism.mechanism_test(model, tables, calib, _score, rates=[0.1, 0.3],
                                     selections=["most_combined", "random"], seeds=[0, 1],
                                     progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (2 + 2 + 4, 8)
    assert list(frame.columns) == mechanism.RESULT_COLUMNS
    assert len(frame) == 8 * len(DOMS)
    dense = frame[frame["selection"] == "dense"]
    assert sorted(dense["recalibrated"].unique()) == [False, True]
    assert (dense["masked"] == 0).all() and (frame[frame["selection"] != "dense"]["masked"] > 0).all()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the model is untouched
    # the dense model as it is scores what the evaluator gives it
    as_is = _score(model)
    np.testing.assert_allclose(dense[~dense["recalibrated"]]["miou"].to_numpy(), as_is["miou"].to_numpy())
    s = mechanism.summary(frame)
    ref = s[(s["selection"] == "dense") & s["recalibrated"]].iloc[0]
    assert ref["d_source"] == 0 and ref["d_heldout"] == 0
    np.testing.assert_allclose(s["gap"], s["d_heldout"] - s["d_source"])
    rnd = s[s["selection"] == "random"]
    assert (rnd["seeds"] == 2).all() and set(rnd["rate"]) == {0.1, 0.3}
    held = frame[frame["averaged"]].groupby(["selection", "rate", "seed", "recalibrated"])["miou"].mean()
    got = s[(s["selection"] == "most_combined") & (s["rate"] == 0.3)]["heldout"].iloc[0]
    assert got == pytest.approx(held.loc[("most_combined", 0.3, 0, True)])


def test_a_masked_copy_zeroes_the_plan_and_leaves_the_model(setup):
    model, _, _, tables = setup
    plan = mechanism.mask_plan(model, "most_combined", 0.2, tables)
    copy = mechanism.masked_copy(model, plan)
    params = dict(copy.named_parameters())
    for lp in plan.layers:
        if lp.pruned and lp.kind == "filter":
            idx = list(lp.pruned)
            assert params[f"{lp.name}.weight"][idx].abs().sum() == 0
            assert params[f"{lp.name}.bias"][idx].abs().sum() == 0
            assert dict(model.named_parameters())[f"{lp.name}.weight"][idx].abs().sum() > 0
    assert mechanism.masked_copy(model, None) is not model


def test_the_service_job_computes_persists_and_prefers_shipped_results(tmp_path, dashboard_cache, monkeypatch):
    """``npdg.service.mechanism``: a model without a DSP table is refused with a message; with one,
    the job computes a frame in the background (the shared model untouched); shipped results next to
    the model are presented instead of computed."""
    from test_service_core import make_assets

    import npdg.service as svc
    from npdg.service import jobs
    from npdg.service import mechanism as msvc

    run, dsp_dir = make_assets(tmp_path)
    monkeypatch.setattr(msvc, "model_dsp", lambda path: dsp_dir)
    monkeypatch.setattr(msvc, "DOMAIN_NAMES", ("source", "night"))
    with pytest.raises(ConfigError, match="sensitivity table"):
        msvc.mechanism_job(run, n_images=1, calib_images=2)
    model = svc.shared_model(run)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.stack([SyntheticDataset("source", "train", SIZE)[i]["image"] for i in (0, 1)])
    probe(model, images, dsp=tiny_dsp(0), n_styles=2, batch_size=2).save(run / "sensitivity_dsp.csv")
    assert msvc.mechanism_job(run, rates=(0.3,), lookup_only=True) is None
    status = msvc.mechanism_job(run, rates=(0.3,), selections=("most_combined", "random"), seeds=(0,),
                                n_images=1, calib_images=2)
    done = jobs.wait(status.key, timeout=600)
    assert done.state == "done", done
    frame = jobs.result(status.key)
    assert list(frame.columns) == mechanism.RESULT_COLUMNS and set(frame["domain"]) == {"source", "night"}
    assert set(frame["selection"]) == {"dense", "most_combined", "random"}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert msvc.summary(frame)["gap"].notna().all()
    # shipped results win over computing
    frame.to_csv(run / msvc.SHIPPED, index=False)
    (run / "mechanism.json").write_text('{"settings": {}}')
    shipped = msvc.mechanism_job(run, lookup_only=True)
    assert shipped is not None and shipped.state == "done"
    pd.testing.assert_frame_equal(jobs.result(shipped.key).reset_index(drop=True), frame.reset_index(drop=True),
                                  check_dtype=False)
