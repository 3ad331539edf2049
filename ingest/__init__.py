"""The torch side of saedb: text -> reader LM -> SAE -> pooled sparse rows -> the store.

Modules, one per pipeline stage:
  sources   read JSONL / CSV / Parquet into documents, keeping every bad row with its line
  reader    tokenize, window, batch and run the reader model up to the SAE's hook
  sae       SAE architectures and the SAELens format (encode math)
  pooling   per-document max / sum / count of every latent, with the peak token's span
  pipeline  drives the stages and writes one transaction per batch through saedb.store
  train     trains a TopK SAE (the embedded default) on the reader's activations
Nothing in ``saedb`` imports this package at import time: analysts never need torch.
"""

import os as _os

# saedb never downloads models: readers are local directories or packaged weights. Make sure
# the Hugging Face libraries never try the network either (set before they are imported).
_os.environ.setdefault("HF_HUB_OFFLINE", "1")
_os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
