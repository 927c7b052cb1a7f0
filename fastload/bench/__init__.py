"""``python -m fastload.bench``: fastload against torch's DataLoader, measured side by side.

Every scenario builds one dataset and one pair of loaders with identical arguments, then
times them *interleaved* (torch, fastload, torch, fastload, ...) so that the machine's
noise hits both alike; results are reported as batches/s and as the ratio to torch
measured in the same run.
"""
