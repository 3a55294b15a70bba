"""The learning tier (issue 11): do the generators ganops trains actually learn?

- ``data``: the shared MNIST split (first 8,000 to train on, last 2,000 held out), shaped
  for each job (padded to 32 px, repeated to RGB) and written as a ``folder`` dataset.
- ``classifier``: a small MNIST CNN, trained once and cached under ``~/.cache/ganops-tests``.
- ``judge``: Fréchet distance on the classifier's features, class coverage, agreement with
  the asked-for class; ``python -m tests.learning.judge RUN_DIR`` judges a finished job.
- ``plain``: the pytorch/examples dcgan loop on ganops' networks: the reference the
  thresholds come from (also the plain side of ``bench/train_throughput.py``).
- ``runs``: trains a job's networks both ways side by side, from the same weights.
- ``fixtures``: the session fixtures and the pass rule, used by ``tests/test_learning.py``.
"""
