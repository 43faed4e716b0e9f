"""Fetches a Prometheus text exposition and parses it with the reference Python client's
parser (prometheus_client, independent of the Rust `prometheus` crate that wrote it).

Usage: parse_metrics.py BASE_URL TARGET, where TARGET is a path on BASE_URL ("/metrics")
or a full URL. Prints JSON: {"families": {name: type}, "samples": [{name, labels, value}]}.
Exits non-zero when the text does not parse.
"""

import json
import math
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def main() -> None:
    base, target = sys.argv[1], sys.argv[2]
    url = target if target.startswith("http") else base.rstrip("/") + target
    with urllib.request.urlopen(url, timeout=30) as resp:
        content_type = resp.headers.get("Content-Type", "")
        text = resp.read().decode("utf-8")
    families, samples = {}, []
    for family in text_string_to_metric_families(text):
        families[family.name] = family.type
        for s in family.samples:
            # JSON has no infinities; +Inf only appears as a bucket's `le`, never a value.
            value = s.value if math.isfinite(s.value) else str(s.value)
            samples.append({"name": s.name, "labels": s.labels, "value": value})
    print(json.dumps({"content_type": content_type, "families": families, "samples": samples}))


if __name__ == "__main__":
    main()
