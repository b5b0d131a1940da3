"""One error type for mistakes a user can fix; main.py prints it without a traceback."""


class UserError(Exception):
    """Something in the user's input (flag, file, row, config key) is wrong.

    The message must say what is wrong, where, and what to do instead.
    """


def exit_on_user_error(function, *args, debug=False):
    """Call function(*args); a UserError becomes one `error: ...` line on stderr and exit status 1
    (with --debug it is raised, traceback and all). The one top-level handler of every entry point."""
    import sys
    try:
        return function(*args)
    except UserError as error:
        if debug:
            raise
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(1)
