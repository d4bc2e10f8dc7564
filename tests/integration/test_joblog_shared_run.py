"""Schedulers that share one ``--joblog`` keep every row, also when one of
them is killed in the middle of writing a row.

Before, the next row written after such a cut was glued to it, and the next
run refused the log (``not a job log``); a scheduler opening the log also cut
off the cut row, and with it whatever another scheduler had appended since it
read the file.
"""

from __future__ import annotations

from pathlib import Path

from harness import poll_until, run_sgs

from simple_gpu_scheduler.report.joblog import HEADER, Row, format_row, read_joblog


def test_rows_after_another_schedulers_cut_row_are_kept(tmp_path: Path, start_sgs) -> None:
    log = tmp_path / "shared.log"
    log.write_bytes(HEADER + b"\n")
    first = start_sgs(["--gpus", "0", "--joblog", str(log)])
    first.write(b"echo one >> ran\n")
    poll_until(lambda: len(read_joblog(str(log))[0]) == 1, what="job 1's row")
    # A third scheduler, killed half-way through its row:
    with open(log, "ab") as killed:
        killed.write(format_row(Row(7, "gpu:1", 1700000000.0, 1.0, 0, 0, b"echo x"))[:15])
    first.write(b"echo two >> ran\n")
    assert first.wait() == 0, first.stderr()

    rows, warning, _ = read_joblog(str(log))  # before: JobLogError, the rows glued together
    assert [r.command for r in rows] == [b"echo one >> ran", b"echo two >> ran"]
    assert warning is not None and "cut" in warning

    # A second scheduler resumes from the shared log: both rows count, the cut one not.
    again = run_sgs(["--gpus", "1", "--joblog", str(log), "--resume-failed"],
                    b"echo one >> ran\necho two >> ran\necho three >> ran\n", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert b"cut" in again.stderr
    assert (tmp_path / "ran").read_text() == "one\ntwo\nthree\n"
    assert [r.command for r in read_joblog(str(log))[0]][-1] == b"echo three >> ran"


def test_two_schedulers_writing_at_once_keep_all_rows(tmp_path: Path, start_sgs) -> None:
    log = tmp_path / "shared.log"
    # A crash left a cut row; both schedulers open the log with it there.
    log.write_bytes(HEADER + b"\n" + b"9\tgpu:0\t1700000000.0\t")
    a = start_sgs(["--gpus", "0", "--joblog", str(log)], stdout=None)
    b = start_sgs(["--gpus", "1", "--joblog", str(log)], stdout=None)
    for n in range(20):
        (a if n % 2 else b).write(f"echo {n}\n".encode())
    assert a.wait() == 0 and b.wait() == 0, a.stderr() + b.stderr()
    rows, warning, _ = read_joblog(str(log))
    assert sorted(r.command for r in rows) == sorted(f"echo {n}".encode() for n in range(20))
    assert warning is not None and "cut" in warning
