"""Reports over a run folder's records: tables in every format, paired statistics, plots and the
HTML page. Reads records only; never runs anything."""
