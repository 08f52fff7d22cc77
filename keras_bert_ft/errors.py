"""The toolkit's user-facing error: says what was expected and echoes what was received."""


class KbftError(ValueError):
    """Bad input from the user. The CLI prints its message as one line, no traceback.

    `argument`: the config field or parameter at fault, when one is; the CLI names it by
    the flag the user typed (`seq_length` -> `--seq-length`)."""

    def __init__(self, message: str, argument=None):
        super().__init__(message)
        self.argument = argument


def bad_argument(name: str, value, expected: str) -> KbftError:
    """`KbftError("seq_length must be an int >= 3. Received: seq_length=0")`."""
    return KbftError(f"{name} must be {expected}. Received: {name}={value!r}", argument=name)
