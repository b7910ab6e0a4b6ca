"""Verifies a JWT-SVID as a relying party that trusts the issuer through
OpenID Connect Discovery would: the discovery document names the issuer and
its keys, PyJWT's PyJWKClient fetches them.

usage: oidc_verify.py BASE_URL TOKEN AUDIENCE
BASE_URL is where the issuer's HTTP endpoint is reached (http://host:port);
the keys are fetched at the path of the document's jwks_uri under it.
Prints the issuer and the verified claims as JSON; exits 1 on failure.
"""
import json
import sys
import urllib.parse
import urllib.request

import jwt


def main() -> int:
    base, token, audience = sys.argv[1:4]
    with urllib.request.urlopen(base + "/.well-known/openid-configuration") as response:
        discovery = json.load(response)
    keys_path = urllib.parse.urlparse(discovery["jwks_uri"]).path
    client = jwt.PyJWKClient(base + keys_path)
    try:
        key = client.get_signing_key_from_jwt(token)
        claims = jwt.decode(
            token,
            key.key,
            algorithms=discovery["id_token_signing_alg_values_supported"],
            audience=audience,
            issuer=discovery["issuer"],
            options={"require": ["sub", "aud", "exp", "iss"]},
        )
    except jwt.PyJWTError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"issuer": discovery["issuer"], "claims": claims}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
