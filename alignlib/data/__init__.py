"""Training data: row formats, offline builtin sets, tokenization with completion masks, collation.

The package folder also holds the bundled training sets (see README.md here for sources).
"""

from alignlib.data.collate import Example, collate, encode_example
from alignlib.data.errors import DataError
from alignlib.data.formats import infer_format, load_rows

__all__ = ["DataError", "Example", "collate", "encode_example", "infer_format", "load_rows"]
