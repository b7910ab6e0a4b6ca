"""Checks what Sigil's Workload API serves of a federated trust domain, with
the Python `spiffe` package, unmodified.

usage: federated_bundles_client.py ENDPOINT present|absent FEDERATED_TD X509_AUTHORITIES TOKEN AUDIENCE
  present: the caller's identities federate with FEDERATED_TD: its bundle is
           served (X509_AUTHORITIES certificates) and TOKEN, a JWT-SVID of
           FEDERATED_TD for AUDIENCE, validates.
  absent:  they do not: no bundle of FEDERATED_TD, and TOKEN is refused.
Prints one line per check; exits non-zero on the first failure.
"""
import sys

from spiffe import TrustDomain, WorkloadApiClient, X509Source


def check(condition, message):
    if not condition:
        print(f"FAIL {message}", file=sys.stderr)
        sys.exit(1)
    print(f"ok   {message}")


def main() -> int:
    endpoint, mode, federated, authorities, token, audience = sys.argv[1:7]
    present = mode == "present"
    federated_td = TrustDomain(federated)
    local_td = TrustDomain("example.org")

    client = WorkloadApiClient(endpoint, default_timeout=20)
    context = client.fetch_x509_context()
    bundle = context.x509_bundle_set.get_bundle_for_trust_domain(federated_td)
    check(context.x509_bundle_set.get_bundle_for_trust_domain(local_td) is not None,
          "X509 context: the local bundle")
    if present:
        check(bundle is not None and len(bundle.x509_authorities) == int(authorities),
              f"X509 context: the bundle of {federated}")
    else:
        check(bundle is None, f"X509 context: no bundle of {federated}")

    x509_bundles = client.fetch_x509_bundles()
    check((x509_bundles.get_bundle_for_trust_domain(federated_td) is not None) == present,
          f"FetchX509Bundles: {federated} {mode}")
    jwt_bundles = client.fetch_jwt_bundles()
    check(jwt_bundles.get_bundle_for_trust_domain(local_td) is not None,
          "FetchJWTBundles: the local bundle")
    jwt_bundle = jwt_bundles.get_bundle_for_trust_domain(federated_td)
    if present:
        check(jwt_bundle is not None and len(jwt_bundle.jwt_authorities) > 0,
              f"FetchJWTBundles: the JWT keys of {federated}")
    else:
        check(jwt_bundle is None, f"FetchJWTBundles: no bundle of {federated}")

    source = X509Source(socket_path=endpoint, timeout_in_seconds=20)
    check((source.get_bundle_for_trust_domain(federated_td) is not None) == present,
          f"X509Source: {federated} {mode}")
    source.close()

    if present:
        validated = client.validate_jwt_svid(token, audience)
        check(str(validated.spiffe_id).startswith(f"spiffe://{federated}/"),
              f"ValidateJWTSVID accepts a JWT-SVID of {federated}")
    else:
        try:
            client.validate_jwt_svid(token, audience)
            check(False, f"ValidateJWTSVID refuses a JWT-SVID of {federated}")
        except Exception as error:  # the package wraps the gRPC status
            check(federated in str(error) and "federates" in str(error),
                  f"ValidateJWTSVID refuses a JWT-SVID of {federated}: {error}")
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
