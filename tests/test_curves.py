"""`megastride curves`: reading a run's metrics.jsonl (resumed runs), the span table, the PNG."""

import json

import pytest

from megastride.engine.curves import MetricsError, read_curve, running_mean, summary
from megastride.launch import curves as cli


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _run(tmp_path, rows, name="run"):
    run = tmp_path / name
    run.mkdir()
    _write(run / "metrics.jsonl", rows)
    return run


def _train(step, bpb, step_s=1.0, peak=2.0):
    return {"step": step, "train/bits_per_byte": bpb, "perf/step_time_s": step_s, "perf/peak_memory_gb": peak,
            "train/loss_scale": None}


def test_resumed_run_counts_each_step_once_the_later_line_winning(tmp_path):
    # steps 1-4, a crash after 4, resume from the checkpoint at 3: step 4 is redone, then 5
    rows = [_train(s, 8.0 - s / 10) for s in (1, 2, 3, 4)] + [_train(4, 7.0), _train(5, 6.9)]
    rows.append({"step": 5, "valid/bits_per_byte": 6.8})
    curve = read_curve(_run(tmp_path, rows))
    assert sorted(curve.train) == [1, 2, 3, 4, 5]
    assert curve.train[4] == 7.0 and curve.valid == {5: 6.8}


def test_summary_spans_against_a_hand_count(tmp_path):
    rows = [_train(s, float(s), step_s=s / 10, peak=s) for s in range(1, 8)] + [{"step": 3, "valid/bits_per_byte": 2.5}]
    rows.append({"step": 6, "valid/bits_per_byte": 5.5})
    spans = summary(read_curve(_run(tmp_path, rows)), every=3)
    assert [(r["first"], r["last"]) for r in spans] == [(1, 3), (4, 6), (7, 7)]
    assert [r["mean"] for r in spans] == [2.0, 5.0, 7.0]
    assert (spans[0]["min"], spans[0]["max"], spans[0]["step_s"], spans[0]["peak_gb"]) == (1.0, 3.0, 0.2, 3.0)
    assert [(r["valid_step"], r["valid"]) for r in spans] == [(3, 2.5), (6, 5.5), (None, None)]


def test_running_mean():
    assert running_mean([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]


@pytest.mark.parametrize("content, message", [
    ("{\"step\": 1, \"train/bits_per_byte\": 7.0}\nnot json\n", "metrics.jsonl:2: not a metrics line"),
    ("{\"train/bits_per_byte\": 7.0}\n", "metrics.jsonl:1: not a metrics line"),
    ("{\"step\": 1, \"perf/step_time_s\": 1.0}\n", "no bits-per-byte values"),
])
def test_bad_metrics_files_are_named(tmp_path, content, message):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(content)
    with pytest.raises(MetricsError, match=message):
        read_curve(run)


def test_cli_table_and_png(tmp_path, capsys):
    pytest.importorskip("PIL")
    from PIL import Image

    run = _run(tmp_path, [_train(s, 8.0 - s / 50) for s in range(1, 41)] + [{"step": 40, "valid/bits_per_byte": 7.1}])
    out = tmp_path / "curve.png"
    assert cli.main([str(run), "--every", "20", "--out", str(out), "--line", "histogram=7.48"]) == 0
    text = capsys.readouterr().out
    assert "40 logged steps, 1 evaluations" in text
    assert "| 21-40 | 7.390 | 7.200 - 7.580 | 7.100 (40) | 1.00 | 2.0 |" in text
    image = Image.open(out).convert("RGB")
    colors = {c for _, c in image.getcolors(1 << 20)}
    assert (31, 119, 180) in colors  # the run's mean curve was drawn


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli.main([str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("megastride curves: error:") and "no such metrics file" in err and "\n" not in err
    with pytest.raises(SystemExit):
        cli.main([str(tmp_path), "--line", "7.48"])
    assert "expected LABEL=BITS" in capsys.readouterr().err
