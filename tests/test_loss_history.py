"""What the loss figure draws of a log, kept as the log grows: read a part at a time, it is what the whole
log draws."""


def _plotted(history):
    """What the loss figure draws of a LossHistory: each part's values and moving average (steps, values), the
    values' range, and the epochs' points."""
    from utils.train.loss_history import smoothing_weight
    weight = smoothing_weight(history.iterations)
    curves = {k: ([a.tolist() for a in c.values.points()], [a.tolist() for a in c.averaged(weight)],
                  c.values.extremes(), c.values.n) for k, c in history.curves.items()}
    return curves, history.iterations, history.held, history.epochs, history.means()


def _iter_lines(steps, rng):
    import json
    lines = []
    for s in steps:
        record = {"kind": "iter", "epoch": 1 + s // 1000, "global_step": s, "l1": round(rng.random(), 2),
                  "transport": round(rng.random(), 1)}  # rounded: equal values, whose earliest is drawn
        if s % 7 == 0:
            record["potential"] = rng.random()  # a part some records hold
        if s % 11 == 0:
            record["l1"] = None  # a non-finite loss, written as null
        lines.append(json.dumps(record) + "\n")
        if s % 1000 == 999:
            lines.append(json.dumps({"kind": "epoch", "epoch": 1 + s // 1000, "global_step": s, "val_psnr": 20.0
                                     + s / 1000}) + "\n")
    return lines


def test_a_running_envelope_fed_in_parts_keeps_the_points_the_whole_curves_envelope_draws():
    """The loss figure's curves are kept as their envelope while a run goes on (a few thousand points, whatever
    the run's length); fed a part at a time, across each widening of its stretches, it draws what the whole
    curve's envelope would."""
    import numpy as np

    from utils.train.loss_history import RunningEnvelope, envelope, stretch
    rng = np.random.default_rng(0)
    for most in (20, 21, 2000):
        ys = rng.integers(0, 5, 6000).astype(np.float64)  # few values: many equal ones
        xs = np.arange(6000, dtype=np.int64) * 3 + 1
        running, n = RunningEnvelope(most), 0
        for size in (1, 1, 2, 17, 5, 400, 1, 1000, 4573):
            running.extend(xs[n:n + size], ys[n:n + size])
            n += size
            want_xs, want_ys = envelope(xs[:n], ys[:n], most)
            got_xs, got_ys = running.points()
            assert got_xs.tolist() == want_xs.tolist() and got_ys.tolist() == want_ys.tolist(), (most, n)
            assert len(got_xs) <= most and running.extremes() == (ys[:n].min(), ys[:n].max())
        assert n == 6000 and stretch(6000, most) > 1


def test_the_loss_figure_redrawn_from_the_new_lines_only_draws_what_the_whole_log_draws(tmp_path, monkeypatch):
    """The figure, redrawn at each epoch's end, read the whole log each time: at the paper's scale (some 861,000
    lines, 300 MB) about 20 s more at every epoch. The run's reader now reads the lines written since its last
    figure only, and draws the same curves as one that reads the whole log, whose lines come in parts, the last
    part of a line included."""
    import random

    import numpy as np

    from utils.train import loss_history
    from utils.train.loss_history import MOST_POINTS, LossLogReader, envelope, smoothed, smoothing_weight
    from utils.train.run_log import read_log
    rng = random.Random(0)
    path = tmp_path / "log.jsonl"
    text = "".join(_iter_lines(range(1, 3001), rng)).encode()
    reader = LossLogReader(path)
    parsed = []
    real_add = loss_history.LossHistory.add
    monkeypatch.setattr(loss_history.LossHistory, "add", lambda self, lines: parsed.append(len(lines := list(lines)))
                        or real_add(self, lines))
    with open(path, "wb") as fh:
        for cut in (0, 30, 500, 501, 40_000, 40_057, 200_000, len(text) - 10, len(text)):
            fh.write(text[fh.tell():cut])
            fh.flush()
            parsed.clear()
            before = reader.offset
            got = _plotted(reader.read())
            assert reader.offset == text.rfind(b"\n", 0, cut) + 1  # a line being written is left for the next read
            assert sum(parsed) == text[before:reader.offset].count(b"\n")  # the new lines only
            assert got == _plotted(LossLogReader(path).read()), cut
    assert reader.offset == len(text)
    records = [r for r in read_log(path) if r["kind"] == "iter"]
    weight = smoothing_weight(len(records))
    for key in ("l1", "transport", "potential"):
        held = [r for r in records if isinstance(r.get(key), float)]
        xs, ys = np.asarray([r["global_step"] for r in held]), np.asarray([r[key] for r in held])
        values, average, extremes, n = got[0][key]
        assert values == [a.tolist() for a in envelope(xs, ys)] and n == len(held)
        assert average == [a.tolist() for a in envelope(xs, np.asarray(smoothed(ys.tolist(), weight)))]
        assert extremes == (ys.min(), ys.max())
    assert got[0]["l1"][3] > MOST_POINTS  # drawn as its envelope


def test_the_runs_log_reader_reads_again_a_log_rewound_mended_moved_aside_or_changed(tmp_path):
    """The reader a run keeps from one figure to the next reads only what was written since, as long as the log
    holds what it read: a record torn by a crash is left until its line is ended, and a log rewound to an earlier
    checkpoint (its later records moved to log.discarded.jsonl), mended, moved aside by a fresh run or changed
    before where it read up to, is read again from its start; its figure is the whole log's each time."""
    import os
    import random

    from utils.train.loss_history import LossLogReader
    from utils.train.run_log import JsonlLog, mend_log, rewind_log
    rng = random.Random(1)
    path = tmp_path / "log.jsonl"
    reader = LossLogReader(path)

    def same() -> bool:
        return _plotted(reader.read()) == _plotted(LossLogReader(path).read())
    assert same() and reader.read().iterations == 0  # no log yet
    path.write_text("".join(_iter_lines(range(1, 2501), rng)) + '{"kind": "iter", "global_step": 2501, "l1": 0.')
    assert same() and reader.read().iterations == 2500  # a crash mid-write: the torn record is not read
    JsonlLog(path).write({"kind": "run", "global_step": 2400})  # the resumed run ends the torn line first
    assert same()
    assert mend_log(path) == (1, len('{"kind": "iter", "global_step": 2501, "l1": 0.\n'))
    assert same() and reader.read().iterations == 2500
    assert rewind_log(path, 2000) == 500 + 1  # resumed from an earlier checkpoint: its later records moved aside
    with open(path, "a") as fh:
        fh.writelines(_iter_lines(range(2001, 2101), rng))
    assert same() and reader.read().iterations == 2100
    assert reader.read().curves["l1"].values.points()[0][-1] == 2100
    steps = reader.read().curves["transport"].values.points()[0].tolist()
    assert steps == sorted(steps) and len(steps) == len(set(steps))  # each step once: none of the discarded
    path.rename(tmp_path / "log.before.jsonl")  # a fresh run moves the earlier run's log aside
    path.write_text("".join(_iter_lines(range(1, 51), rng)))
    assert same() and reader.read().iterations == 50
    path.write_text(path.read_text()[:-1])  # a whole record at the end, without its newline
    assert same() and reader.read().iterations == 50
    with open(path, "a") as fh:
        fh.write(', "transport": 5}\n')  # the line it ended goes on: no longer a record
    assert same() and reader.read().iterations == 49
    with open(path, "r+") as fh:  # the same file, changed in place before where it was read up to
        fh.write(fh.read().replace('"l1": ', '"l1": 1', 3))
    assert same()
    os.truncate(path, 100)
    assert same()
    path.unlink()
    assert same() and reader.read().iterations == 0

