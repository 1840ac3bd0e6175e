import os
import sys
import warnings

warnings.filterwarnings("ignore", message=".*ccache.*")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for path in (HERE, ROOT):  # seg_helpers, and the checkout's hapi_autoloss
    if path not in sys.path:
        sys.path.insert(0, path)
