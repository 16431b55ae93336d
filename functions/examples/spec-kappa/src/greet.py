"""A helper module packaged with hello.py by the ArchiveUploadSpec's include glob."""


def greeting(name):
    return "Hi, %s!\n" % name
