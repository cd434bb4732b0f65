"""The one error type for everything a user can fix."""


class UserError(Exception):
    """A problem the user can fix. The CLI prints its message on one line and exits with `exit_code`.

    The message names the file/record/field, what was expected and how to fix it.
    """

    exit_code = 2

    def __init__(self, message: str, *, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
