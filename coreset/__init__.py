"""coreset: per-sample gradient importance and coreset selection."""
