import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import os
import tempfile

# prepared shards of the tests go to a private cache, not the user's ~/.cache/bigbatch
os.environ.setdefault("BIGBATCH_CACHE", tempfile.mkdtemp(prefix="bigbatch-test-cache-"))
