"""Old path of :mod:`kit.deploy.bundle`, which it is (one module object): scripts, notebooks and users that import
``kit.bundle`` keep working, monkeypatching included."""

import sys

from kit.deploy import bundle as _moved

sys.modules[__name__] = _moved
