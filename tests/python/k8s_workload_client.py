"""Fetches an X509-SVID with the Python `spiffe` package, unmodified, once told to.

usage: k8s_workload_client.py ENDPOINT
Prints "ready <pid>" and waits for a line on stdin, so the test can first
give this process's pid a container cgroup; then prints the SPIFFE ID of
the X509-SVID it fetched, or exits non-zero with the error.
"""
import os
import sys

from spiffe import WorkloadApiClient


def main() -> int:
    endpoint = sys.argv[1]
    print(f"ready {os.getpid()}", flush=True)
    sys.stdin.readline()
    client = WorkloadApiClient(endpoint, default_timeout=20)
    try:
        svid = client.fetch_x509_svid()
    except Exception as error:  # the package wraps the gRPC status
        print(f"refused: {error}", file=sys.stderr)
        return 1
    print(svid.spiffe_id, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
