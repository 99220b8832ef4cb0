"""Copy detection on the served index, shared by the query assets and `aindex query`.

- `detection`: decode query files safely (a bad file gets a verdict with its reason, never
  an exception), embed them, search the top k, re-rank and decide with the threshold;
- `calibration`: build the calibration queries and record a threshold for a served index
  and search setting;
- `judge`: local files judged ad hoc with the current threshold.
"""
