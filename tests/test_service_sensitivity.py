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
