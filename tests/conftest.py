import sys
from pathlib import Path

# Test helpers (model_util, spm_util, peers) are plain modules beside the tests.
sys.path.insert(0, str(Path(__file__).parent))
