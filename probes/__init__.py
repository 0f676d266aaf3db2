"""Weight-space memory-recall probes and attention scores."""
