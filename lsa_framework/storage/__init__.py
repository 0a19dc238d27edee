"""Everything lsaf writes to disk goes through here: atomic files and folders, output guards, locks.

The rule this package enforces: lsaf never deletes or overwrites what it did not write. Folders it
writes carry a marker (written last) naming what is inside; only such a folder can be replaced.
"""
