"""Pre-training methods (TAC, TSP, CLAP and variants), installed as ``clap_bench.methods``."""
