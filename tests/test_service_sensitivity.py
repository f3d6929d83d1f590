"""Sensitivity page service (npdg.service.sensitivity): probe, load, re-mix, compare tables."""

from __future__ import annotations

import numpy as np
import pytest
from test_service_core import make_assets

from npdg.errors import ConfigError, DataError
from npdg.service import sensitivity as sens

SIZE = (64, 128)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("sens"))


def test_probe_recombine_save_load_and_agreement(assets, tmp_path):
    run, dsp_dir = assets
    calls = []
    res = sens.probe_dsp(run, dsp_dir, n_images=2, n_styles=2, size=SIZE, batch_size=1,
                         progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 2), (2, 2)] and res.meta["images"] == 2 and res.meta["lam"] == pytest.approx(0.4)
    t = res.table
    np.testing.assert_allclose(t["combined"], 0.4 * t["w_unary"] + 0.6 * t["w_binary"])
    t.loc[:, "combined"] = -1.0  # the caller's own copy: the cache is not affected
    assert (sens.probe_dsp(run, dsp_dir, n_images=2, n_styles=2, size=SIZE, batch_size=1).table["combined"] >= 0).all()
    unary = sens.recombine(res, 1.0)
    np.testing.assert_allclose(unary.table["combined"], unary.table["w_unary"])
    path = sens.probe_dsp(run, dsp_dir, n_images=2, n_styles=2, size=SIZE, batch_size=1).save(run / "sensitivity" / "iter_000010.csv")
    assert sens.run_tables(run) == [str(path)]
    loaded = sens.load_table(path)
    assert len(loaded.table) == len(res.table) and loaded.meta["styles"] == 2
    agree = sens.rank_agreement(loaded, loaded)
    assert np.allclose(agree["spearman"].dropna(), 1.0) and len(agree) == loaded.table["layer"].nunique()
    assert list(sens.layer_summary(loaded).columns)[:3] == ["layer", "kind", "size"]
    with pytest.raises(DataError):
        sens.load_table(tmp_path / "nope.csv")


def test_oracle_probe_uses_heldout_renderings(assets):
    run, _ = assets
    res = sens.probe_oracle(run, domains=("night", "fog"), indices=(0,), size=SIZE)
    assert res.meta["styles"] == 2 and res.meta["oracle_domains"] == ["night", "fog"]
    assert res.table["unary"].between(0, 1).all()
    with pytest.raises(ConfigError, match="layout"):
        sens.probe_oracle(run, domains=("source", "suburb"), indices=(0,), size=SIZE)


def test_probe_job_runs_once_persists_and_validates(assets, dashboard_cache):
    from npdg.service import jobs

    run, dsp_dir = assets
    assert sens.probe_job(run, "dsp", n_images=2, n_styles=2, dsp_path=dsp_dir, lookup_only=True) is None
    first = sens.probe_job(run, "dsp", n_images=2, n_styles=2, unary="raw", dsp_path=dsp_dir)
    again = sens.probe_job(run, "dsp", n_images=2, n_styles=2, unary="raw", dsp_path=dsp_dir)
    assert first.key == again.key  # one worker for both requests
    assert jobs.wait(first.key, 300).state == "done"
    table = sens.job_table(again)
    assert table.meta["unary"] == "raw" and table.meta["images"] == 2
    table.table.loc[:, "combined"] = -1  # a copy: the job's result is untouched
    assert (sens.job_table(again).table["combined"] >= 0).all()
    assert list((dashboard_cache / "sensitivity").glob("*.csv"))
    other = sens.probe_job(run, "dsp", n_images=2, n_styles=2, unary="share", dsp_path=dsp_dir, lookup_only=True)
    assert other is None  # every setting is in the key
    for bad in ({"source": "bogus"}, {"n_images": 1}, {"n_styles": 1}, {"unary": "loud"}):
        args = {"source": "dsp", "n_images": 2, "n_styles": 2, "unary": "share", **bad}
        with pytest.raises(ConfigError):
            sens.probe_job(run, args.pop("source"), dsp_path=dsp_dir, **args)
    with pytest.raises(ConfigError, match="at least 2 domains"):
        sens.probe_job(run, "oracle", n_images=2, domains=("night",))


def test_unit_info_reads_scores_rank_group_and_partners(assets):
    run, dsp_dir = assets
    res = sens.probe_dsp(run, dsp_dir, n_images=2, n_styles=2, size=SIZE, batch_size=1)
    layer = str(res.table["layer"].iloc[0])
    rows = res.table[res.table["layer"] == layer]
    top = int(rows.loc[rows["combined"].idxmax(), "unit"])
    info = sens.unit_info(res, layer, top)
    assert info.rank == 1 and info.layer_size == len(rows) and info.has_partners
    assert all(0 <= j < len(rows) and j != top and 0 <= r <= 1 for j, r in info.partners)
    assert layer in info.group_layers
    old = sens.SensitivityResult(res.table.drop(columns=["partners"]), res.meta)  # a table of the older format
    assert not sens.unit_info(old, layer, top).has_partners
    with pytest.raises(ConfigError, match="out of range"):
        sens.unit_info(res, layer, len(rows))
    with pytest.raises(ConfigError, match="not in this sensitivity table"):
        sens.unit_info(res, "net.nope", 0)
