"""JupyterLab as `make lab` starts it: the collection only, nothing fetched from the internet.

Read because the Makefile (and tests/test_browser.py) put this folder on $JUPYTER_CONFIG_PATH.
"""

from pathlib import Path

c.ServerApp.allow_root = True  # containers and CI often run as root
c.LabApp.news_url = None  # no news feed: JupyterLab neither fetches news nor asks whether to
c.LabApp.check_for_updates_class = "jupyterlab.NeverCheckForUpdate"
c.LabApp.app_settings_dir = str(Path(__file__).parent / "lab_settings")  # overrides.json
