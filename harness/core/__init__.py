"""The bottom floor: identity (content hashes, class lists), whole-or-absent writes, the result store, the output
lock, distilled-set folders and cached files; it imports nothing else of the project."""
