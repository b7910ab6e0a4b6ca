"""Reads Sigil's owner binding with independent clients: the Python `spiffe`
package on the Workload API, `cryptography` to find the X.509 extension,
pyasn1 to decode its DER, PyJWT to verify JWT-SVIDs and WITs.

usage:
  owner_binding.py x509 ENDPOINT CONSENT_FILE PEM_OUT
      The default X509-SVID's owner binding, decoded by pyasn1, and the
      SHA-256 of CONSENT_FILE's trimmed text, as one JSON object; the leaf
      is written to PEM_OUT for openssl.
  owner_binding.py jwt ENDPOINT AUDIENCE
      A JWT-SVID fetched with `spiffe`, verified by PyJWT against the JWT
      bundle `spiffe` fetched; its claims as JSON.
  owner_binding.py wit BUNDLE_JSON WIT
      A WIT-SVID verified by PyJWT against the wit-svid key of a JWK Set;
      its header and claims as JSON.
  owner_binding.py watch ENDPOINT
      Keeps an X509Source open and prints a JSON line whenever what it
      serves changes: {"state": "svid", ...} or {"state": "error", ...}.
      Runs until stdin closes.
  owner_binding.py jwk PUBLIC_KEY_PEM
      The key as a public JWK (PyJWT) and its RFC 7638 thumbprint, as JSON.
Exits non-zero, naming the problem, when a check fails.
"""
import base64
import hashlib
import json
import sys
import threading
import time

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from pyasn1.codec.der import decoder as der_decoder
from pyasn1.codec.der import encoder as der_encoder
from pyasn1.type import char, constraint, namedtype, univ
from spiffe import TrustDomain, WorkloadApiClient, X509Source

OWNER_BINDING_OID = x509.ObjectIdentifier("2.25.304551571773697307655795444668565683147")


class Actors(univ.SequenceOf):
    componentType = char.UTF8String()


class OwnerBinding(univ.Sequence):
    """OwnerBinding ::= SEQUENCE { owner UTF8String, keyThumbprint OCTET
    STRING (SIZE (32)), consentHash OCTET STRING (SIZE (32)), actors
    SEQUENCE OF UTF8String OPTIONAL }"""

    componentType = namedtype.NamedTypes(
        namedtype.NamedType("owner", char.UTF8String()),
        namedtype.NamedType(
            "keyThumbprint",
            univ.OctetString().subtype(subtypeSpec=constraint.ValueSizeConstraint(32, 32)),
        ),
        namedtype.NamedType(
            "consentHash",
            univ.OctetString().subtype(subtypeSpec=constraint.ValueSizeConstraint(32, 32)),
        ),
        namedtype.OptionalNamedType("actors", Actors()),
    )


class Failed(Exception):
    pass


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def emit(value):
    print(json.dumps(value, sort_keys=True), flush=True)


def decode_binding(raw):
    value, rest = der_decoder.decode(raw, asn1Spec=OwnerBinding())
    if rest:
        raise Failed(f"{len(rest)} bytes after the OwnerBinding SEQUENCE")
    if der_encoder.encode(value) != raw:
        raise Failed("the extension value is not in DER (re-encoding differs)")
    actors = value["actors"]
    return {
        "owner": str(value["owner"]),
        "key_thumbprint": b64url(bytes(value["keyThumbprint"])),
        "consent_sha256": b64url(bytes(value["consentHash"])),
        "actors": [str(a) for a in actors] if actors.isValue else None,
    }


def x509_command(endpoint, consent_file, pem_out):
    client = WorkloadApiClient(endpoint, default_timeout=20)
    svid = client.fetch_x509_svid()
    client.close()
    leaf = svid.leaf
    extension = leaf.extensions.get_extension_for_oid(OWNER_BINDING_OID)
    with open(pem_out, "wb") as f:
        f.write(leaf.public_bytes(serialization.Encoding.PEM))
    with open(consent_file, encoding="ascii") as f:
        consent = f.read().strip()
    result = decode_binding(extension.value.value)
    result.update(
        spiffe_id=str(svid.spiffe_id),
        critical=extension.critical,
        consent_file_sha256=b64url(hashlib.sha256(consent.encode("ascii")).digest()),
    )
    emit(result)


def jwt_command(endpoint, audience):
    client = WorkloadApiClient(endpoint, default_timeout=20)
    svid = client.fetch_jwt_svid(audience={audience})
    token = svid.token
    header = jwt.get_unverified_header(token)
    trust_domain = TrustDomain(str(svid.spiffe_id).split("/")[2])
    bundle = client.fetch_jwt_bundles().get_bundle_for_trust_domain(trust_domain)
    client.close()
    if bundle is None:
        raise Failed(f"no JWT bundle for {trust_domain}")
    key = bundle.get_jwt_authority(header.get("kid"))
    if key is None:
        raise Failed(f"no JWT authority {header.get('kid')!r} in the bundle")
    claims = jwt.decode(
        token,
        key=key,
        algorithms=[header["alg"]],
        audience=audience,
        options={"require": ["sub", "aud", "exp"]},
    )
    emit({"header": header, "claims": claims})


def wit_command(bundle_path, wit):
    with open(bundle_path, encoding="utf-8") as f:
        bundle = json.load(f)
    header = jwt.get_unverified_header(wit)
    keys = [k for k in bundle["keys"] if k.get("use") == "wit-svid" and k.get("kid") == header.get("kid")]
    if len(keys) != 1:
        raise Failed(f"no wit-svid key {header.get('kid')!r} in the bundle")
    key = jwt.PyJWK.from_dict(keys[0], algorithm=header["alg"])
    claims = jwt.decode(
        wit,
        key=key.key,
        algorithms=[header["alg"]],
        options={"require": ["sub", "exp", "cnf"], "verify_aud": False},
    )
    emit({"header": header, "claims": claims})


class FailClosedClient(WorkloadApiClient):
    """The package's own client, with its stream watcher fail-closed
    (retry_connect=False, a documented option): spiffe 0.3.2 retries every
    stream error but CANCELLED and INVALID_ARGUMENT forever, so an
    X509Source on the default client keeps serving its last SVID after the
    agent answers PermissionDenied ("no identity issued")."""

    def stream_x509_contexts(self, on_success, on_error, retry_connect=True, retry_policy=None):
        return super().stream_x509_contexts(on_success, on_error, retry_connect=False)


def source_state(source):
    try:
        context = source.get_x509_context()
    except Exception as error:  # the package raises X509SourceError once it has failed
        return {"state": "error", "error": str(error)}
    svids = context.x509_svids
    return {
        "state": "svid",
        "ids": [str(s.spiffe_id) for s in svids],
        "serials": [format(s.leaf.serial_number, "x") for s in svids],
        "owner_bound": [
            any(e.oid == OWNER_BINDING_OID for e in s.leaf.extensions) for s in svids
        ],
    }


def watch_command(endpoint):
    # The fail-closed source is the one measured; the default one is
    # reported alongside as "default" so its behaviour is visible.
    sources = {
        "fail_closed": X509Source(
            workload_api_client=FailClosedClient(endpoint), timeout_in_seconds=20
        ),
        "default": X509Source(socket_path=endpoint, timeout_in_seconds=20),
    }
    changed = threading.Event()
    for source in sources.values():
        source.subscribe_for_updates(changed.set)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    last = {}
    while not stop.is_set():
        for name, source in sources.items():
            state = source_state(source)
            if last.get(name) != state:
                last[name] = state
                emit(dict(state, source=name, at=time.time()))
        changed.wait(timeout=0.01)
        changed.clear()
    for source in sources.values():
        source.close()


def jwk_command(pem_path):
    with open(pem_path, "rb") as f:
        key = serialization.load_pem_public_key(f.read())
    if isinstance(key, ed25519.Ed25519PublicKey):
        jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(key))
        required = {"crv": jwk["crv"], "kty": jwk["kty"], "x": jwk["x"]}
    elif isinstance(key, ec.EllipticCurvePublicKey):
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key))
        required = {"crv": jwk["crv"], "kty": jwk["kty"], "x": jwk["x"], "y": jwk["y"]}
    else:
        raise Failed(f"unexpected key type {type(key).__name__}")
    # RFC 7638 section 3: the required members, sorted, no whitespace.
    canonical = json.dumps(required, sort_keys=True, separators=(",", ":"))
    emit({"jwk": jwk, "thumbprint": b64url(hashlib.sha256(canonical.encode("utf-8")).digest())})


COMMANDS = {
    "x509": (x509_command, 3),
    "jwt": (jwt_command, 2),
    "wit": (wit_command, 2),
    "watch": (watch_command, 1),
    "jwk": (jwk_command, 1),
}


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        return 2
    command, arity = COMMANDS[sys.argv[1]]
    args = sys.argv[2:]
    if len(args) != arity:
        print(f"{sys.argv[1]} takes {arity} arguments\n{__doc__}", file=sys.stderr)
        return 2
    try:
        command(*args)
    except (Failed, jwt.PyJWTError) as error:
        print(f"FAIL {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
