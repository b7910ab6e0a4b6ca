"""Drives Sigil's Workload API with the Python `spiffe` package, unmodified.

usage: workload_client.py ENDPOINT EXPECTED_IDS AUDIENCE MIN_ROTATIONS
  EXPECTED_IDS: comma-separated SPIFFE IDs, in the order the agent must list them.
Prints one line per check; exits non-zero on the first failure.
"""
import sys
import threading
import time

from spiffe import JwtSource, TrustDomain, WorkloadApiClient, X509Source


def check(condition, message):
    if not condition:
        print(f"FAIL {message}", file=sys.stderr)
        sys.exit(1)
    print(f"ok   {message}")


def main() -> int:
    endpoint, expected, audience, min_rotations = sys.argv[1:5]
    expected_ids = expected.split(",")
    trust_domain = TrustDomain(expected_ids[0].split("/")[2])

    client = WorkloadApiClient(endpoint, default_timeout=20)
    svids = client.fetch_x509_svids()
    check([str(s.spiffe_id) for s in svids] == expected_ids, f"X509-SVIDs in order: {[str(s.spiffe_id) for s in svids]}")
    check(str(client.fetch_x509_svid().spiffe_id) == expected_ids[0], "the first SVID is the default")
    bundles = client.fetch_x509_bundles()
    check(bundles.get_bundle_for_trust_domain(trust_domain) is not None, "X.509 bundle for the trust domain")
    context = client.fetch_x509_context()
    check(len(context.x509_svids) == len(expected_ids), "X.509 context")

    jwt = client.fetch_jwt_svid(audience={audience})
    check(str(jwt.spiffe_id) == expected_ids[0], "JWT-SVID for the default identity")
    validated = client.validate_jwt_svid(jwt.token, audience)
    check(str(validated.spiffe_id) == expected_ids[0], "ValidateJWTSVID accepts it")
    try:
        client.validate_jwt_svid(jwt.token, "another-audience")
        check(False, "ValidateJWTSVID refuses a wrong audience")
    except Exception as error:  # the package wraps the gRPC status
        check("another-audience" in str(error) or "audience" in str(error), "ValidateJWTSVID refuses a wrong audience")
    jwt_bundles = client.fetch_jwt_bundles()
    check(jwt_bundles.get_bundle_for_trust_domain(trust_domain) is not None, "JWT bundle for the trust domain")

    jwt_source = JwtSource(socket_path=endpoint, timeout_in_seconds=20)
    svid = jwt_source.fetch_svid(audience={audience})
    check(str(svid.spiffe_id) == expected_ids[0], "JwtSource fetches a JWT-SVID")
    jwt_source.close()

    # Rotation: the X509Source must see new SVIDs on its open stream.
    source = X509Source(socket_path=endpoint, timeout_in_seconds=20)
    serials = {source.svid.leaf.serial_number}
    changed = threading.Event()

    def on_update():
        serials.add(source.svid.leaf.serial_number)
        if len(serials) > int(min_rotations):
            changed.set()

    source.subscribe_for_updates(on_update)
    changed.wait(timeout=40)
    check(len(serials) > int(min_rotations), f"X509Source saw {len(serials) - 1} rotations")
    source.close()
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
