"""Downstream heads (G-TAD, QAT, 2D-TAN), installed as ``clap_bench.downstream``."""
