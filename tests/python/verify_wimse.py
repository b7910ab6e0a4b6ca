"""Verifies a WIT-SVID and its WPT with PyJWT and cryptography, step by step
as draft-ietf-wimse-workload-creds and draft-ietf-wimse-wpt list the checks.
Independent of Sigil's own verifier.

usage: verify_wimse.py BUNDLE_JSON WIT WPT AUDIENCE
Prints each step, then "verified <sub>"; exits 1 naming the failed step.
"""
import base64
import hashlib
import json
import sys
import time

import jwt

SPIFFE_ALGS = ["RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"]


class Failed(Exception):
    pass


def step(name, ok, detail=""):
    if not ok:
        raise Failed(f"{name}: {detail}")
    print(f"ok   {name}")


def b64url_sha256(text):
    digest = hashlib.sha256(text.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def verify(bundle, wit, wpt, audience):
    now = int(time.time())

    # The WIT (workload-creds 3.1; WIT-SVID 2-4).
    header = jwt.get_unverified_header(wit)
    step("WIT typ is wit+jwt", header.get("typ") == "wit+jwt", header.get("typ"))
    step("WIT alg is an allowed asymmetric alg", header.get("alg") in SPIFFE_ALGS, header.get("alg"))
    step("WIT has a kid", bool(header.get("kid")))
    keys = [k for k in bundle["keys"] if k.get("use") == "wit-svid" and k.get("kid") == header["kid"]]
    step("WIT kid names a wit-svid key of the bundle", len(keys) == 1, header["kid"])
    issuer_key = jwt.PyJWK.from_dict(keys[0], algorithm=header["alg"])
    try:
        wit_claims = jwt.decode(
            wit,
            key=issuer_key.key,
            algorithms=[header["alg"]],
            options={"require": ["sub", "exp", "cnf"], "verify_aud": False},
        )
    except jwt.PyJWTError as e:
        raise Failed(f"WIT signature and exp: {type(e).__name__}: {e}")
    print("ok   WIT signature verifies with the bundle key; exp not passed")
    step("WIT sub is a SPIFFE ID", wit_claims["sub"].startswith("spiffe://"), wit_claims["sub"])
    step("WIT has no aud", "aud" not in wit_claims)
    cnf_jwk = wit_claims["cnf"].get("jwk", {})
    step("WIT cnf.jwk carries an allowed alg", cnf_jwk.get("alg") in SPIFFE_ALGS, cnf_jwk.get("alg"))

    # The WPT, in the order of draft-ietf-wimse-wpt.
    wpt_header = jwt.get_unverified_header(wpt)
    step("WPT alg equals cnf.jwk.alg", wpt_header.get("alg") == cnf_jwk["alg"], wpt_header.get("alg"))
    workload_key = jwt.PyJWK.from_dict(cnf_jwk, algorithm=cnf_jwk["alg"])
    try:
        wpt_claims = jwt.decode(
            wpt,
            key=workload_key.key,
            algorithms=[cnf_jwk["alg"]],
            audience=audience,
            options={"require": ["aud", "exp", "jti", "wth"]},
        )
    except jwt.PyJWTError as e:
        raise Failed(f"WPT signature, aud and exp: {type(e).__name__}: {e}")
    print("ok   WPT signature verifies with the cnf key")
    step("WPT typ is wpt+jwt", wpt_header.get("typ") == "wpt+jwt", wpt_header.get("typ"))
    print("ok   WPT aud is the target URI")
    step("WPT exp is not unreasonably far ahead", wpt_claims["exp"] - now <= 300, wpt_claims["exp"])
    step("WPT wth is the hash of the WIT", wpt_claims["wth"] == b64url_sha256(wit), wpt_claims["wth"])
    jti = base64.urlsafe_b64decode(wpt_claims["jti"] + "=" * (-len(wpt_claims["jti"]) % 4))
    step("WPT jti carries 128 random bits", len(jti) >= 16, wpt_claims["jti"])
    return wit_claims["sub"]


def main():
    bundle_path, wit, wpt, audience = sys.argv[1:5]
    with open(bundle_path, encoding="utf-8") as f:
        bundle = json.load(f)
    try:
        sub = verify(bundle, wit, wpt, audience)
    except Failed as e:
        print(f"FAILED {e}", file=sys.stderr)
        return 1
    print(f"verified {sub}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
