"""Phase 3: does an artifact decide like the desktop model? Runners, scoring, parity, reports, plots."""
