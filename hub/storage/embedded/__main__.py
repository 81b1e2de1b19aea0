"""`python -m hub.storage.embedded keep DATA_DIR`: the keeper (started by keeper.ensure_keeper)."""

import logging
import sys
from pathlib import Path

from hub.storage.embedded.keeper import keep

logging.basicConfig(level=logging.INFO, format="%(asctime)s keeper %(levelname)s %(message)s")
if sys.argv[1:2] == ["keep"] and len(sys.argv) == 3:
    keep(Path(sys.argv[2]))
else:
    sys.exit("usage: python -m hub.storage.embedded keep DATA_DIR")
