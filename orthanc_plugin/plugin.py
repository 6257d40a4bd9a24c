"""Entry script for Orthanc's Python plugin ("PythonScript": ".../orthanc_plugin/plugin.py").

Orthanc's embedded interpreter (Debian's Python 3.11) gets the project's virtual environment
first on sys.path: $MIADMARK_VENV, else the .venv folder beside this repository's orthanc_plugin/.
Nothing else is changed in the environment (no LD_LIBRARY_PATH).
"""

import os
import site
import sys


def _use_project_environment() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(here)
    venv = os.environ.get("MIADMARK_VENV") or os.path.join(repo, ".venv")
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    before = list(sys.path)
    site_packages = os.path.join(venv, "lib", version, "site-packages")
    if not os.path.isdir(site_packages):
        raise RuntimeError(f"MIAD-MARK: no {site_packages}: set MIADMARK_VENV to the project's virtual "
                           f"environment (a CPython {sys.version_info.major}.{sys.version_info.minor} venv)")
    site.addsitedir(site_packages)  # also runs its .pth files (the editable install of miadmark)
    added = [p for p in sys.path if p not in before]
    sys.path[:] = [repo] + added + [p for p in before if p != repo]


_use_project_environment()

from orthanc_plugin.service import install  # noqa: E402

install()
