"""Copy detection: the query sensor, the calibrated threshold and the verdicts."""
