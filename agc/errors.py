"""The base class of errors that are the user's to fix (a bad file, option or profile).

The CLI prints them as one clear line, without a traceback, and exits with status 2.
"""


class UserError(Exception):
    """Bad input: the message names the file or option and says what to do."""
