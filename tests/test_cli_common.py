"""The CLI's one progress bar (npdg.cli.common.progress_bar): plain lines for a launching process."""

from __future__ import annotations

from npdg.cli import common


def test_progress_lines_for_a_launching_process(monkeypatch, capsys):
    monkeypatch.setenv(common.PROGRESS_ENV, "lines")
    bar, update = common.progress_bar("prune")
    update(1, 3)
    update(3, 3)
    bar.close()
    assert capsys.readouterr().err.splitlines() == ["progress 1/3", "progress 3/3"]
    monkeypatch.delenv(common.PROGRESS_ENV)
    bar, update = common.progress_bar("prune", enabled=False)
    update(2, 3)
    bar.close()
    assert "progress" not in capsys.readouterr().err
