"""Verifies a JWT-SVID with PyJWT against a SPIFFE bundle (JWK Set).

usage: verify_jwt_svid.py BUNDLE_JSON TOKEN AUDIENCE
Prints the subject on success; exits 1 with the PyJWT error class otherwise.
"""
import json
import sys

import jwt


def main() -> int:
    bundle_path, token, audience = sys.argv[1:4]
    with open(bundle_path, encoding="utf-8") as f:
        bundle = json.load(f)
    header = jwt.get_unverified_header(token)
    keys = [k for k in bundle["keys"] if k.get("use") == "jwt-svid" and k.get("kid") == header["kid"]]
    if len(keys) != 1:
        print(f"no jwt-svid key {header['kid']!r} in bundle", file=sys.stderr)
        return 1
    key = jwt.PyJWK.from_dict(keys[0], algorithm=header["alg"])
    try:
        claims = jwt.decode(
            token,
            key=key.key,
            algorithms=["ES256", "ES384", "RS256", "PS256"],
            audience=audience,
            options={"require": ["sub", "aud", "exp"]},
        )
    except jwt.PyJWTError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(f"sub={claims['sub']} aud={claims['aud']} exp={claims['exp']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
