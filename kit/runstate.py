"""Old path of :mod:`kit.run.state`, which it is (one module object): scripts, notebooks and users that import
``kit.runstate`` keep working, monkeypatching included."""

import sys

from kit.run import state as _moved

sys.modules[__name__] = _moved
