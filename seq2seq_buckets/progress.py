"""Progress text shared by training and batch decoding logs."""


def duration(seconds):
  """Seconds -> '4m05s', or '2h13m' from an hour up."""
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else \
      f"{seconds // 60}m{seconds % 60:02d}s"


def eta_line(done, total, seconds, unit):
  """'done/total unit (P%), R unit/s, ETA 4m05s' after `seconds` spent on `done` of `total`
  (ETA ? before anything is done)."""
  rate = done / max(seconds, 1e-9)
  eta = duration((total - done) / rate) if rate > 0 else "?"
  return (f"{done}/{total} {unit} ({100.0 * done / max(total, 1):.0f}%), {rate:.1f} {unit}/s, "
          f"ETA {eta}")
