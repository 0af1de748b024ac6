"""zo-runner: zeroth-order finetuning of language models (MeZO, ConMeZO and friends)."""


class ZOError(RuntimeError):
    """A run cannot go on; the message is one line that says what happened and how to fix it."""
