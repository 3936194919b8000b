"""seqrec: offline-RL sequential recommender for campaigns."""

__version__ = "0.1.0"
