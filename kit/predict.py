"""Old path of :mod:`kit.deploy.predict`, which it is (one module object): scripts, notebooks and users that import
``kit.predict`` keep working, monkeypatching included."""

import sys

from kit.deploy import predict as _moved

sys.modules[__name__] = _moved
