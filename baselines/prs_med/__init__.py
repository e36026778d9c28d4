"""A PRS-Med-style position-reasoning segmenter: SAM-family encoder and decoder, a causal LM
with LoRA, and the fusion of image tokens with the LM's prompt states (README, "Training the
baseline")."""

import os

# Before torch loads OpenMP: idle threads sleep instead of spinning, so DataLoader workers
# and the training step can share a few CPU cores (spinning threads made a 2-core step
# several times slower).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
