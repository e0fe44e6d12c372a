import sys
from pathlib import Path

# Test helpers (synthetic stores, media makers) are plain modules next to the tests.
sys.path.insert(0, str(Path(__file__).parent))
