"""Progress text: durations and ETA lines."""

from seq2seq_buckets import progress


def test_duration_in_minutes_then_hours():
  assert progress.duration(0) == "0m00s"
  assert progress.duration(245.9) == "4m05s"
  assert progress.duration(3599) == "59m59s"
  assert progress.duration(2 * 3600 + 13 * 60 + 59) == "2h13m"


def test_eta_line_from_the_rate_so_far():
  assert progress.eta_line(1000, 4000, 10.0, "lines") == \
      "1000/4000 lines (25%), 100.0 lines/s, ETA 0m30s"
  assert progress.eta_line(0, 10, 0.0, "lines") == "0/10 lines (0%), 0.0 lines/s, ETA ?"
