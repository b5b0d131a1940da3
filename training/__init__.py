"""Training: the loop, resumable checkpoints, optimizer groups, evaluation and the CPU speed rules."""
