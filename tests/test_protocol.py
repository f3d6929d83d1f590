"""bench/protocol.py's row grammar and per-stage summary (the runs themselves are bench-length)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def protocol():
    spec = importlib.util.spec_from_file_location("protocol", ROOT / "bench" / "protocol.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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
