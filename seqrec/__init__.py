"""seqrec: offline-RL sequential recommender for campaigns.

`seqrec.prepare`, `seqrec.train`, `seqrec.evaluate`, `seqrec.load_run` and `seqrec.score` are the notebook API
(seqrec/api, docs/api.md). They are looked up on first use: importing any part of seqrec runs this file, and the
torch-free layers (`seqrec.datasets`, `seqrec.core`) must not pull in the rest.
"""

__version__ = "0.1.0"

API = ("prepare", "train", "evaluate", "load_run", "score")


def __getattr__(name: str):
    """The notebook API's calls, imported from seqrec.api when first asked for."""
    if name in API:
        from seqrec import api

        value = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'seqrec' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *API])
