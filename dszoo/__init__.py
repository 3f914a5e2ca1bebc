"""``import dszoo``: the distribution's name for the ``models`` package (the same objects)."""
from models import *  # noqa: F401,F403
from models import __all__  # noqa: F401
