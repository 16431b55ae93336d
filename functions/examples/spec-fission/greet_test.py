"""Excluded from the archive by the ArchiveUploadSpec's exclude glob."""

import greet

assert greet.greeting("x") == "Hello, x!\n"
