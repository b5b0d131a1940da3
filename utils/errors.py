"""One error type for mistakes a user can fix; main.py prints it without a traceback."""


class UserError(Exception):
    """Something in the user's input (flag, file, row, config key) is wrong.

    The message must say what is wrong, where, and what to do instead.
    """
