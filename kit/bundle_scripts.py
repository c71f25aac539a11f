"""Old path of :mod:`kit.deploy.bundle_scripts`, which it is (one module object): scripts, notebooks and users that import
``kit.bundle_scripts`` keep working, monkeypatching included."""

import sys

from kit.deploy import bundle_scripts as _moved

sys.modules[__name__] = _moved
