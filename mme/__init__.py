"""The `mme` tooling: demo models, model archives, the local endpoint, and what talks to a deployed stage."""


class MmeError(Exception):
    """The root of every error `mme` reports to its user; the message says what is wrong and how to fix it."""
