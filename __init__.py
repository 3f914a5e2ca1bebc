"""Not part of the package. A clone folder named ``dszoo`` beside a script: ``import dszoo`` finds
the folder first, and without this file would import it as an empty namespace package ("cannot
import name 'create_model' from 'dszoo' (unknown location)"). Imported as ``dszoo``, this file
hands the import to the package in this checkout (``models/``, with ``blocks/`` and ``configs/``
mapped as setup.cfg maps them) through hubconf.py's finder; imported under any other name (a
tool scanning the folder), it does nothing.
"""
import sys as _sys

if __name__ == "dszoo":
    import importlib.util as _util
    from pathlib import Path as _Path

    del _sys.modules[__name__]  # the checkout's package takes this module's place
    _hub = _util.spec_from_file_location("_dszoo_checkout", _Path(__file__).with_name("hubconf.py"))
    _hub.loader.exec_module(_util.module_from_spec(_hub))  # imports dszoo from this checkout
