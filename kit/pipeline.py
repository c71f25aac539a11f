"""Old path of :mod:`kit.run.pipeline`, which it is (one module object): scripts, notebooks and users that import
``kit.pipeline`` keep working, monkeypatching included."""

import sys

from kit.run import pipeline as _moved

sys.modules[__name__] = _moved
