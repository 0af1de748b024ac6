"""zo-runner: zeroth-order finetuning of language models (MeZO, ConMeZO and friends)."""


class ZOError(RuntimeError):
    """A run cannot go on; the message is one line that says what happened and how to fix it."""


class Diverged(ZOError):
    """The run's numbers left their range: a loss not finite, far above its start, or an estimate stuck
    at 0. In a search (+sweeps=tune) that answers the trial (this setting is too large), so a sweep
    whose other jobs ran does not exit as failed."""
