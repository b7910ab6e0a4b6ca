"""Parses a Prometheus text exposition (stdin) with the reference Python client's parser.

Prints one JSON object: each sample as `name{label="value",...}` (labels
sorted) to its value. A malformed exposition makes the parser raise, and
this script exit non-zero with its message.
"""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families


def main() -> int:
    samples = {}
    for family in text_string_to_metric_families(sys.stdin.read()):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            key = f"{sample.name}{{{labels}}}" if labels else sample.name
            samples[key] = sample.value
    json.dump(samples, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
