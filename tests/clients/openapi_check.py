"""Checks mlx-serve's /openapi.json with an independent validator (openapi-spec-validator),
that every route the README's API section lists is in it, that every path in it is routed,
and that /docs is a self-contained page.

Usage: python openapi_check.py BASE_URL README.md. Exits non-zero on any failure."""
import json
import re
import sys
import urllib.error
import urllib.request

import openapi_spec_validator
from openapi_spec_validator import validate

from check import check

base, readme_path = sys.argv[1], sys.argv[2]
doc = json.load(urllib.request.urlopen(base + "/openapi.json"))
validate(doc)  # raises OpenAPIValidationError on an invalid document
check(doc["openapi"].startswith("3."), doc["openapi"])

# Routes in the README's "## API" section: every `METHOD /path` or `/path` in backticks.
readme = open(readme_path, encoding="utf-8").read()
api = readme.split("\n## API\n", 1)[1].split("\n## ", 1)[0]
listed = set()
for row in api.splitlines():
    if not row.startswith("| `"):
        continue
    first_cell = row.split("|")[1]
    for path in re.findall(r"`(?:[A-Z]+ )?(/[^`\s]*)`", first_cell):
        listed.add(path)
check(len(listed) >= 20, sorted(listed))
missing = sorted(p for p in listed if p not in doc["paths"])
check(not missing, f"README routes missing from /openapi.json: {missing}")

# Every documented path answers (a 404 "no route" would mean the document lies).
for path, item in doc["paths"].items():
    for method in item:
        url = base + path.replace("{id}", "all-MiniLM-L6-v2")
        req = urllib.request.Request(url, method=method.upper(), data=b"{}" if method != "get" else None,
                                     headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req) as resp:
                body = resp.read()
        except urllib.error.HTTPError as e:
            body = e.read()
            check(not (e.code == 404 and b"no route" in body), f"{method} {path} is not routed")
            check(e.code != 405, f"{method} {path}: method not allowed")

# /docs: HTML that loads nothing from elsewhere.
html = urllib.request.urlopen(base + "/docs").read().decode()
check("/openapi.json" in html and "<script" in html)
check(not re.search(r"""(src|href)=["']?(https?:)?//""", html), "docs page loads something from elsewhere")
print(f"openapi-spec-validator {openapi_spec_validator.__version__ if hasattr(openapi_spec_validator, '__version__') else ''}:"
      f" valid OpenAPI {doc['openapi']}, {len(doc['paths'])} paths, all {len(listed)} README routes present, /docs self-contained")
