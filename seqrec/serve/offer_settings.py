"""How `seqrec score` uses a run's offer learner (seqrec/serve/offers.py): torch-free, so the command line can
name the choices before any model is loaded."""

from __future__ import annotations

from dataclasses import dataclass, field

from seqrec.rl.bandits.joint import JointConfig

DECISION_KINDS = ("greedy", "epsilon_greedy", "softmax")   # thompson needs a spread, linucb its own model
DEFAULT_DECISION = JointConfig(kind="epsilon_greedy", epsilon=0.02)   # the abtest's arm B's default


@dataclass(frozen=True)
class OfferSettings:
    """Whether and how `seqrec score` decides offers with the run's learner."""

    use: bool | None = None   # None: when the run has RUN/offers/offers.json; False: never (--no-offers); True: must
    decision: JointConfig = field(default_factory=lambda: DEFAULT_DECISION)

    def __post_init__(self) -> None:
        if self.decision.kind not in DECISION_KINDS:
            raise ValueError(f"the offer decision must be one of {', '.join(DECISION_KINDS)}; "
                             f"got {self.decision.kind!r}")
