"""synpro_megatron.progress without a TTY: log lines with done/total, rate and ETA."""
import io

from synpro_megatron.progress import LogProgress, progress


def test_log_lines_every_n_items_and_at_the_end():
    out = io.StringIO()  # not a TTY, like Slurm's log file
    bar = progress(total=10, desc="work", unit="doc", file=out, every_n=4, every_s=1e9)
    assert isinstance(bar, LogProgress)
    for _ in range(10):
        bar.update(1)
    bar.set_postfix(loss="1.5")
    bar.close()
    lines = out.getvalue().splitlines()
    assert [ln.split(" doc")[0] for ln in lines] == ["[work] 4/10", "[work] 8/10", "[work] 10/10"]
    assert "(40.0%)" in lines[0] and "doc/s" in lines[0] and "ETA " in lines[0] and "loss=1.5" in lines[-1]


def test_time_interval_iterable_and_resume_offset():
    out = io.StringIO()
    seen = list(progress(range(3), desc="it", file=out, every_s=0.0))
    assert seen == [0, 1, 2]
    assert out.getvalue().splitlines()[-1].startswith("[it] 3/3 it (100.0%)")
    out = io.StringIO()
    with progress(total=5, initial=3, desc="resumed", file=out, every_n=100, every_s=1e9) as bar:
        bar.update(2)
    assert out.getvalue().startswith("[resumed] 5/5")


def test_disabled_prints_nothing_and_an_error_adds_no_line():
    out = io.StringIO()
    with progress(total=3, file=out, disable=True) as bar:
        bar.update(3)
    assert out.getvalue() == ""
    try:
        with progress(total=3, file=out, every_n=100, every_s=1e9) as bar:
            bar.update(1)
            raise KeyError("boom")
    except KeyError:
        pass
    assert out.getvalue() == ""
