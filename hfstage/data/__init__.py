"""Data kinds: one module per on-disk format, plus ``prepare`` for the real data sets we ship recipes for."""
