"""Scorers: ActivityNet detection mAP (``detection``), grounding recall/mIoU (``grounding``)."""

from clap_bench.eval.detection import (
    DEFAULT_TIOU_THRESHOLDS,
    DetectionFileError,
    evaluate_detection,
)

__all__ = ["DEFAULT_TIOU_THRESHOLDS", "DetectionFileError", "evaluate_detection"]
