"""The OS admin API under `/os` (process table, kill, renice, stats) and the probes."""
