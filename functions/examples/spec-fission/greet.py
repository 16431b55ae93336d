"""A helper module packaged with hello.py by the ArchiveUploadSpec's include globs."""


def greeting(name):
    return "Hello, %s!\n" % name
