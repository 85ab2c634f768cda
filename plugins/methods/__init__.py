"""Method plugins: Supervised, and the dual-model family of the CODA paper."""
