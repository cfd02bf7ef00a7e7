"""clap_bench: a benchmark harness for video-encoder pre-training strategies on temporal localization.

Data flow (one folder per stage): ``data`` (annotation readers) → ``clips`` (sampling and
decoding) → ``encoders`` + ``methods`` → ``training`` → ``features`` → ``downstream`` heads →
``eval`` scorers → ``runs`` (run store, executors, tables).
"""

__version__ = "0.1.0"
