"""Structured pruning: torch-pruning with the PixelShuffle rule, budgets, iterative rounds, sensitivity."""
