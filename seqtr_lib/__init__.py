"""seqtr_lib: SeqTR visual grounding as coordinate-token sequences."""

__version__ = "0.1.0"
