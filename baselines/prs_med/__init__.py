"""A PRS-Med-style position-reasoning segmenter: SAM-family encoder and decoder, a causal LM
with LoRA, and the fusion of image tokens with the LM's prompt states (README, "Training the
baseline")."""
