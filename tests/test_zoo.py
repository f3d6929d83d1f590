"""The zoo recipe end to end on tiny settings: build (train → sparse → prune), export with a measured
card, precomputed sensitivity tables, list, verify (files, SHA-256, plan replay, re-measured mIoU)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

import npdg.recipes.zoo as zoo
from npdg.cli import main

TINY = ("data.size=64x128", "data.length=4", "train.iters=2", "train.batch_size=2", "train.log_every=1",
        "train.checkpoint_every=1", "train.num_workers=0", "train.warmup_iters=0", "train.crop=64x128")


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    base = tmp_path_factory.mktemp("zoo")
    mp = pytest.MonkeyPatch()
    entries = tuple(replace(e, overrides=(*TINY, *e.overrides), sparse=(e.sparse[0], 2, 0.05) if e.sparse else None,
                            prune={**e.prune, "finetune_iters": 1} if e.prune else {})
                    for e in zoo.ENTRIES if e.name.startswith("r18-") and e.name in ("r18-erm", "r18-dsp", "r18-npdg-sparse", "r18-npdg"))
    mp.setattr(zoo, "ENTRIES", entries)
    mp.setattr(zoo, "BY_NAME", {e.name: e for e in entries})
    mp.setattr(zoo, "ZOO_DIR", base / "assets" / "zoo")
    mp.setattr(zoo, "WORK_DIR", base / "runs")
    mp.setattr(zoo, "EVAL_SCENES", 2)
    mp.setattr(zoo, "VERIFY_SCENES", 1)
    mp.setattr(zoo, "EVAL_SIZE", (64, 128))
    mp.setattr(zoo, "COST_SIZES", ((64, 128),))
    mp.setattr(zoo, "ASCENT_CANDIDATES", (1.0, 0.25))
    mp.setattr(zoo, "ASCENT_PROBE_STEPS", 2)
    built = zoo.build(work=base / "runs", device="cpu", log=lambda m: None)
    yield base, built
    mp.undo()


def test_build_exports_measured_cards_and_tables(tiny_zoo):
    base, built = tiny_zoo
    assert [p.name for p in built] == ["r18-erm", "r18-dsp", "r18-npdg-sparse", "r18-npdg"]
    card = json.loads((zoo.ZOO_DIR / "r18-npdg" / "card.json").read_text())
    assert card["parent"] == "r18-npdg-sparse" and card["command"] == "python -m npdg zoo build r18-npdg"
    assert set(card["files"]) == {"model.safetensors", "pruning_plan.json", "config.yaml"}
    dense = json.loads((zoo.ZOO_DIR / "r18-dsp" / "card.json").read_text())
    choice = dense["ascent_step_choice"]
    assert choice["chosen"] in (1.0, 0.25) and "source val" in choice["scenes"]  # chosen on source scenes only
    assert "dsp.step_size=" + str(choice["chosen"]) in dense["overrides"]
    doms = dense["evaluation"]["domains"]
    assert doms["source"]["role"] == "source" and doms["suburb"]["role"] == "content_shift"
    assert len(doms["night"]["confusion"]) == 19 and doms["night"]["images"] == 2
    assert {"sensitivity_dsp.csv", "sensitivity_oracle.csv", "sensitivity_dsp.json"} <= set(dense["files"])
    assert dense["cost"]["64x128"]["gflops"] > card["cost"]["64x128"]["gflops"]  # pruning removed FLOPs
    # the weights shipped are fp16 and the README renders the table
    assert dense["files"]["model.safetensors"]["bytes"] < 2.05 * dense["cost"]["64x128"]["params"]  # 2 bytes a weight
    assert card["files"]["model.safetensors"]["bytes"] < 0.8 * dense["files"]["model.safetensors"]["bytes"]
    for name in ("r18-dsp", "r18-npdg"):  # shipped configs and cards carry no path of this checkout
        assert str(zoo.REPO) not in (zoo.ZOO_DIR / name / "config.yaml").read_text()
        assert str(zoo.REPO) not in (zoo.ZOO_DIR / name / "card.json").read_text()
    readme = (zoo.ZOO_DIR.parent / "README.md").read_text()
    assert "| r18-npdg | prune | r18-npdg-sparse |" in readme and "Total size of `assets/`" in readme


def test_list_and_verify(tiny_zoo, capsys):
    assert zoo.verify(log=lambda m: None) == []  # load-only: files, SHA-256, plan replay
    assert zoo.verify(["r18-npdg"], eval_scenes=1, log=lambda m: None) == []  # re-measured against the card
    t = zoo.zoo_table()
    assert t["shipped"].all() and (t["heldout"] >= 0).all()
    cfg = zoo.ZOO_DIR / "r18-npdg-sparse" / "config.yaml"
    original = cfg.read_bytes()
    cfg.write_text("tampered: true\n")
    assert any("differs from its card" in p for p in zoo.verify(["r18-npdg-sparse"], log=lambda m: None))
    cfg.write_bytes(original)
    assert main(["zoo", "list"]) == 0 and "r18-npdg" in capsys.readouterr().out


def test_refresh_sensitivity_rewrites_tables_and_card_hashes(tiny_zoo):
    table = zoo.ZOO_DIR / "r18-dsp" / "sensitivity_dsp.csv"
    import pandas as pd

    before = pd.read_csv(table)
    table.write_text(before.drop(columns=["partners"]).to_csv(index=False))  # a table in the older format
    assert any("differs from its card" in p for p in zoo.verify(["r18-dsp"], log=lambda m: None))
    assert zoo.refresh_sensitivity(["r18-dsp"], log=lambda m: None) == ["r18-dsp"]
    after = pd.read_csv(table)
    assert "partners" in after.columns
    pd.testing.assert_frame_equal(after, before)  # the same probe: the same numbers
    assert zoo.verify(["r18-dsp"], log=lambda m: None) == []  # card hashes follow
    from npdg.errors import DataError

    with pytest.raises(DataError, match="pruned"):
        zoo.refresh_sensitivity(["r18-npdg"], log=lambda m: None)


def test_curves_are_shipped_and_open_at_once(tiny_zoo, monkeypatch, capsys):
    from npdg.service import jobs
    from npdg.service import pruning as pr

    monkeypatch.setattr(pr, "CURVE_RATES", (0.0, 0.3))
    monkeypatch.setattr(pr, "DOMAIN_NAMES", ("source", "night"))
    assert main(["zoo", "curves", "r18-npdg-sparse"]) == 0
    folder = zoo.ZOO_DIR / "r18-npdg-sparse"
    card = json.loads((folder / "card.json").read_text())
    assert {"prune_curves.csv", "prune_curves.json"} <= set(card["files"])
    assert zoo.verify(["r18-npdg-sparse"], log=lambda m: None) == []
    jobs.forget()
    status = pr.curve_job(folder, "l1norm", n_images=2, lookup_only=True)  # shipped: no job, no wait
    assert status.state == "done" and status.from_disk and "precomputed" in status.label
    frame = pr.job_frame(status)
    assert set(frame["rate"]) == {0.0, 0.3} and set(frame["domain"]) == {"source", "night"}
    other = pr.curve_job(folder, "l1norm", n_images=4, lookup_only=True)  # other settings: not the shipped rows
    assert other is None
    capsys.readouterr()
    assert main(["zoo", "curves", "r18-npdg"]) == 2  # a pruned model: a clear error, exit 2
    assert "not a shipped sparse-trained" in capsys.readouterr().err


def test_unknown_and_missing_models_are_named():
    from npdg.errors import DataError

    with pytest.raises(DataError, match="unknown zoo model"):
        zoo.zoo_path("r99")


def test_service_lists_the_zoo_and_shares_models(tiny_zoo):
    from npdg.service import zoo as svc

    listing = svc.zoo_models()
    assert not listing.problems and set(listing.table["name"]) >= {"r18-erm", "r18-npdg"}
    card = svc.zoo_card("r18-npdg")
    card["name"] = "changed"
    assert svc.zoo_card("r18-npdg")["name"] == "r18-npdg"  # callers get copies
    assert svc.zoo_model("r18-npdg") is svc.zoo_model("r18-npdg")  # loaded once per process


def test_cli_accepts_zoo_models(tiny_zoo, capsys, tmp_path):
    assert main(["cost", "--run", "zoo:r18-npdg", "--size", "32x64", "--batches", ""]) == 0
    assert main(["eval", "--run", "zoo:r18-erm", "--data", "source", "--limit", "1", "--no-progress"]) == 0
    assert not (zoo.ZOO_DIR / "r18-erm" / "eval").exists()  # nothing is written into the shipped zoo
    assert main(["cost", "--run", "zoo:r99"]) == 2 and "unknown zoo model" in capsys.readouterr().err
