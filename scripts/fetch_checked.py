"""Download a URL to a file only if its sha256 is the one given (standard library only).

python3 scripts/fetch_checked.py URL SHA256 FILE
"""

import hashlib
import sys
import urllib.request
from pathlib import Path

url, expected, target = sys.argv[1:4]
body = urllib.request.urlopen(url, timeout=60).read()
if hashlib.sha256(body).hexdigest() != expected:
    sys.exit(f"{url}: unexpected sha256, not written")
Path(target).parent.mkdir(parents=True, exist_ok=True)
Path(target).write_bytes(body)
