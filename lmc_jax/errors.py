"""The one base class of errors a user can fix (a bad config value, file or run directory), and `require`.

`lmc_jax.main` prints such an error as one line, `error: <message>`, and exits non-zero; every
message names the thing that is wrong and the fix. Anything else is a bug and keeps its traceback.
`require` raises one in the shared form `config.<key>=<value!r>: <fix>`.
"""


class UserError(ValueError):
    """A value, file or directory the user gave that cannot work; the message names it and the fix."""


class ConfigError(UserError):
    """A config value that cannot work."""


class DivergedError(UserError, FloatingPointError):
    """A non-finite loss or runaway weights (a training run or the DCGAN's); nothing diverged was checkpointed.
    The message names the step and the fix."""


def require(condition: bool, key: str, value, fix: str, error: type[UserError] = UserError) -> None:
    """Raises `error("config.<key>=<value!r>: <fix>")` unless `condition` holds."""
    if not condition:
        raise error(f"config.{key}={value!r}: {fix}")
