"""The paper's reported tables (``paper/*.yaml``); the run store lives under ``results/runs/``."""
