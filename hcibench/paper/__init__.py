"""The CODA paper's published tables (``reference/``) and the comparison of a run with them."""
