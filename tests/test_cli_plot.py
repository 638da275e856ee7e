"""`agentcore bench cache --plot`: the picture is drawn from the benchmark's records."""

import pytest

from agentcore.bench.plot import plot_session

pytest.importorskip("matplotlib")


def reuse_rows(checkpoints=True):
    return [{"figure": "reuse", "turn": t, "prompt": 400 + 100 * t, "reused": 0 if t == 1 else 390 + 100 * t,
             "prefill_ms": 4000.0 if t == 1 else 150.0, "checkpoints": checkpoints} for t in range(1, 6)]


def test_plot_writes_a_png(tmp_path):
    out = plot_session(reuse_rows() + [{"figure": "reuse_min", "value": 1.0}], tmp_path / "cache.png")
    assert out.read_bytes().startswith(b"\x89PNG")


def test_plot_draws_a_measured_run_without_checkpoints(tmp_path):
    out = plot_session(reuse_rows() + reuse_rows(checkpoints=False), tmp_path / "both.png")
    assert out.stat().st_size > 0


def test_plot_without_reuse_records_says_what_to_run(tmp_path):
    with pytest.raises(ValueError, match="--skip reuse"):
        plot_session([{"figure": "store", "value": 1.0}], tmp_path / "none.png")
