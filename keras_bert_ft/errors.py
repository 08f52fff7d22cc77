"""The toolkit's user-facing error: says what was expected and echoes what was received."""


class KbftError(ValueError):
    """Bad input from the user. The CLI prints its message as one line, no traceback."""


def bad_argument(name: str, value, expected: str) -> KbftError:
    """`KbftError("seq_length must be an int >= 3. Received: seq_length=0")`."""
    return KbftError(f"{name} must be {expected}. Received: {name}={value!r}")
