"""Pure metric maths: arrays in, numbers (with bootstrap replicates) out; no config, no I/O, no report."""
