"""Package and on-disk format versions.

``__version__`` is the package release. ``FORMAT_VERSION`` is the checkpoint format: it changes
only when a saved model could no longer be loaded faithfully (new weights layout, new config
semantics). Loading refuses a checkpoint whose major format differs from ours.
"""

__version__ = "0.1.0"
FORMAT_VERSION = "1.0"
