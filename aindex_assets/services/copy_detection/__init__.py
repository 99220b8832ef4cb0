"""Copy detection on the served index, shared by the query assets and `aindex query`.

- `detection`: decode query files safely (a bad file gets a verdict with its reason, never
  an exception), embed them, search the top k, re-rank and decide with the threshold;
- `calibration`: build the calibration queries and record a threshold, set for a target
  false-positive rate, for a served index and search setting; look the recorded one up
  (`NoThreshold` when there is none: detection never calibrates);
- `batch`: a query batch's verdicts, recorded;
- `judge`: local files judged ad hoc with the recorded threshold.
"""
