"""Import path of the pyfunc class in models registered before ``tasks/`` had rooms.

A registered version pickles its model class by reference: versions logged before the move name
``tasks.serving.DetectorModel``. When such a version is loaded in a process where this package is already
imported (the rollback check does exactly that), the pickle resolves the name here, so it must keep resolving.
New versions pickle ``tasks.runtimes.pyfunc.DetectorModel``. Keep this file while such versions may be loaded.
"""

from tasks.runtimes.pyfunc import DetectorModel

__all__ = ["DetectorModel"]
