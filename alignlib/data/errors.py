"""The error every data problem raises (its own module: formats, builtin sets and collation all
raise it, and none of them should import another just for the class)."""


class DataError(ValueError):
    """Data that cannot be used as given (the message names the file, row and field)."""
