"""`bigbatch plot RUN... --x step|tokens|time --out FILE.png` on small metrics.jsonl files written by hand."""

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.image
import matplotlib.pyplot as plt
import pytest
from matplotlib.ticker import EngFormatter

from bigbatch.cli import main
from bigbatch.train.metrics import run_figure, write_run_plots


def write_run(path, steps=20, log_every=2, valid_every=6, tokens_per_step=512, seconds_per_step=0.5,
              loss0=5.0, clock=True):
    """A run directory whose metrics.jsonl looks like the trainer's: train rows every ``log_every`` steps, valid
    rows (no elapsed_s, as the trainer writes them) every ``valid_every``; ``clock=False`` drops elapsed_s."""
    path.mkdir(parents=True)
    rows = []
    for step in range(1, steps + 1):
        if step % log_every == 0:
            row = {"step": step, "tokens": step * tokens_per_step, "loss": loss0 / step ** 0.3,
                   "lr": 1e-3 * min(1.0, step / 5), "grad_norm": 1.0, "tokens_per_s": tokens_per_step / seconds_per_step,
                   "mfu": None}
            if clock:
                row["elapsed_s"] = step * seconds_per_step
            rows.append(row)
        if step % valid_every == 0:
            rows.append({"step": step, "tokens": step * tokens_per_step, "split": "valid", "loss": loss0 / step ** 0.2})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def loss_lines(fig):
    """(train lines, valid lines) of the loss panel; valid lines are drawn with markers."""
    ax = fig.axes[0]
    return ([ln for ln in ax.get_lines() if ln.get_marker() in ("None", None, "")],
            [ln for ln in ax.get_lines() if ln.get_marker() == "o"])


def run_plot(capsys, *argv):
    rc = main(["plot", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_plot_writes_one_png_overlaying_runs(tmp_path, capsys):
    a = write_run(tmp_path / "base")
    b = write_run(tmp_path / "rope", loss0=4.0, seconds_per_step=0.8)
    out = tmp_path / "figs" / "compare.png"
    rc, stdout, err = run_plot(capsys, a, b, "--x", "tokens", "--out", out)
    assert rc == 0, err
    assert stdout.strip() == str(out)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    pixels = matplotlib.image.imread(out)
    assert pixels.shape[1] >= 1500 and pixels.shape[0] >= 400  # three panels side by side
    assert pixels[..., :3].std() > 0.05 and len({tuple(p) for p in pixels[::7, ::7, :3].reshape(-1, 3)}) > 20


@pytest.mark.parametrize("x, label, expected", [
    ("step", "step", lambda step: step),
    ("tokens", "tokens", lambda step: step * 512),
    ("time", "training time", lambda step: step * 0.5),
])
def test_the_x_axis_is_the_one_asked_for(tmp_path, x, label, expected):
    a = write_run(tmp_path / "a")
    b = write_run(tmp_path / "b", loss0=4.0)
    fig = run_figure([a, b], x)
    try:
        assert [ax.get_title() for ax in fig.axes] == ["loss (nats/target)", "learning rate", "tokens/s"]
        assert all(ax.get_xlabel().startswith(label) for ax in fig.axes)
        if x == "tokens":  # 10k, not 10000
            assert all(isinstance(ax.xaxis.get_major_formatter(), EngFormatter) for ax in fig.axes)
        train, valid = loss_lines(fig)
        assert len(train) == 2 and len(valid) == 2  # per run: train loss and valid loss
        assert list(train[0].get_xdata()) == [expected(s) for s in range(2, 21, 2)]
        # valid rows carry no elapsed_s: placed on the training clock of their step
        assert list(valid[0].get_xdata()) == pytest.approx([expected(s) for s in (6, 12, 18)])
        assert len(fig.axes[1].get_lines()) == 2 and len(fig.axes[2].get_lines()) == 2
    finally:
        plt.close(fig)


def test_one_colour_per_run_and_a_legend_of_run_names(tmp_path):
    runs = [write_run(tmp_path / name) for name in ("small", "large", "wide")]
    fig = run_figure(runs, "step")
    try:
        train, valid = loss_lines(fig)
        colours = [ln.get_color() for ln in train]
        assert len(set(colours)) == 3
        assert [ln.get_color() for ln in valid] == colours  # a run's valid loss has its train loss's colour
        assert [ln.get_color() for ln in fig.axes[1].get_lines()] == colours
        (legend,) = fig.legends
        assert [t.get_text() for t in legend.get_texts()] == ["small", "large", "wide", "train", "valid (sample)"]
    finally:
        plt.close(fig)


def test_the_final_evaluation_on_the_whole_split_is_a_point_of_its_own(tmp_path):
    """The trainer's last valid row ("full": true) scores the whole split, the others a fixed sample: a star, not
    the end of the sample's line."""
    run = write_run(tmp_path / "r")
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 20, "tokens": 20 * 512, "split": "valid", "loss": 3.0, "full": True}) + "\n")
    fig = run_figure([run], "time")
    try:
        _, valid = loss_lines(fig)
        assert list(valid[0].get_xdata()) == pytest.approx([3.0, 6.0, 9.0])
        (star,) = [ln for ln in fig.axes[0].get_lines() if ln.get_marker() == "*"]
        assert list(star.get_xdata()) == [10.0] and list(star.get_ydata()) == [3.0]
        assert star.get_color() == valid[0].get_color()
        assert [t.get_text() for t in fig.legends[0].get_texts()][-1] == "valid (whole split, final)"
    finally:
        plt.close(fig)


def test_runs_with_the_same_name_are_told_apart_by_path(tmp_path):
    a = write_run(tmp_path / "one" / "run")
    b = write_run(tmp_path / "two" / "run")
    fig = run_figure([a, b], "step")
    try:
        assert [t.get_text() for t in fig.legends[0].get_texts()][:2] == [str(a), str(b)]
    finally:
        plt.close(fig)


def test_a_metrics_file_without_a_clock_falls_back_to_step_with_a_note(tmp_path, capsys):
    new = write_run(tmp_path / "new")
    old = write_run(tmp_path / "old", clock=False)
    out = tmp_path / "p.png"
    rc, _, err = run_plot(capsys, new, old, "--x", "time", "--out", out)
    assert rc == 0 and out.exists()
    assert "note: old: metrics.jsonl rows carry no 'elapsed_s'; plotting every run against step instead of time" in err
    fig = run_figure([new, old], "time")
    try:
        assert fig.axes[0].get_xlabel() == "step"
    finally:
        plt.close(fig)


def test_rows_the_plot_must_leave_out(tmp_path):
    """Skipped steps, non-finite losses written as null and a last line cut short by a kill are left out."""
    run = write_run(tmp_path / "r")
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 21, "skipped": True, "loss": 3.0, "grad_norm": None}) + "\n")
        f.write(json.dumps({"step": 22, "tokens": 22 * 512, "loss": None, "lr": 1e-3, "elapsed_s": 11.0}) + "\n")
        f.write('{"step": 24, "tok')
    fig = run_figure([run], "time")
    try:
        train, _ = loss_lines(fig)
        assert max(train[0].get_xdata()) == 10.0
        assert max(fig.axes[1].get_lines()[0].get_xdata()) == 11.0  # its lr is still drawn
    finally:
        plt.close(fig)


def one_error_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys):
    good = write_run(tmp_path / "good")
    (tmp_path / "bare").mkdir()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    (tmp_path / "evalonly").mkdir()
    (tmp_path / "evalonly" / "metrics.jsonl").write_text('{"step": 5, "split": "valid", "loss": 2.0}\n')
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\nnot json\n{"step": 2, "loss": 1.0}\n')
    out = tmp_path / "p.png"
    cases = [
        ([tmp_path / "bare"], f"{tmp_path / 'bare'}: no metrics.jsonl; expected a run directory"),
        ([tmp_path / "missing"], f"{tmp_path / 'missing'}: no such directory"),
        ([tmp_path / "empty"], f"{tmp_path / 'empty' / 'metrics.jsonl'} is empty; nothing to plot"),
        ([tmp_path / "evalonly"], "has no training rows"),
        ([tmp_path / "broken"], f"{tmp_path / 'broken' / 'metrics.jsonl'}:2: not a JSON object"),
        ([good, "--x", "wall"], "--x 'wall': expected one of step, tokens, time"),
    ]
    for argv, message in cases:
        rc, _, err = run_plot(capsys, *argv, "--out", out)
        assert rc == 2, (argv, err)
        line = one_error_line(err)
        assert line.startswith("bigbatch: error: ") and message in line, line
    rc, _, err = run_plot(capsys, good, "--out", tmp_path / "p.jpeg")
    assert rc == 2 and "expected a file name ending in .png, .svg or .pdf" in one_error_line(err)
    assert not out.exists()


def test_a_run_that_has_not_logged_a_step_yet_writes_no_run_plots(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")
    assert write_run_plots(run) == []
    pngs = write_run_plots(write_run(tmp_path / "s"))
    assert [p.name for p in pngs] == ["loss.png", "lr.png", "throughput.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
