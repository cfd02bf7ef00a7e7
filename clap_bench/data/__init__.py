"""Annotations: one internal schema and a reader per real dataset format."""

from clap_bench.data.schema import AnnotationError, AnnotationSet, Segment, Sentence, Video

__all__ = ["AnnotationError", "AnnotationSet", "Segment", "Sentence", "Video"]
