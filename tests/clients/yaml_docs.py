"""Reads a multi-document YAML stream on stdin and prints its documents as one JSON list
(tests/deploy.rs inspects rendered Kubernetes manifests with it). PyYAML, safe loader."""

import json
import sys

import yaml


def main() -> None:
    docs = [d for d in yaml.safe_load_all(sys.stdin) if d is not None]
    json.dump(docs, sys.stdout)


if __name__ == "__main__":
    main()
