"""Calls Sigil's example WIMSE service as an independent client would:
fetches a WIT-SVID from the agent with the Python `spiffe` package, mints a
WPT with PyJWT and sends it in the Authorization header under the `WPT`
scheme (draft-ietf-wimse-wpt-02 section 2), with httpx. Then sends the
identical request again, which the service must refuse as a replay with 401
and `WWW-Authenticate: WPT` (section 2.1).

usage: wpt_authorization_client.py ENDPOINT SERVICE_URL AUDIENCE
  ENDPOINT: the Workload API socket, unix:///path
  SERVICE_URL: e.g. http://127.0.0.1:8080/orders
  AUDIENCE: the WPT's aud, the service's target URI
Prints one line per check; exits 1 on the first failure. Prints no token.
"""
import base64
import hashlib
import json
import secrets
import sys
import time

import httpx
import jwt
from spiffe import WorkloadApiClient


def check(condition, message):
    if not condition:
        print(f"FAIL {message}", file=sys.stderr)
        sys.exit(1)
    print(f"ok   {message}")


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def read_varint(data, i):
    shift = value = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def fields(data):
    """The length-delimited fields of a protobuf message: (number, bytes)."""
    i = 0
    while i < len(data):
        key, i = read_varint(data, i)
        number, wire_type = key >> 3, key & 7
        if wire_type == 2:
            length, i = read_varint(data, i)
            yield number, data[i : i + length]
            i += length
        elif wire_type == 0:
            _, i = read_varint(data, i)
        else:
            raise ValueError(f"unexpected wire type {wire_type}")


def fetch_wit_svid(client):
    """The first WIT-SVID of FetchWITSVID. The package (0.3) has no WIT API
    yet, so this calls the RPC on the package's own channel, which carries
    the workload.spiffe.io header; messages per the incubating proto:
    WITSVIDResponse { repeated WITSVID svids = 1 }, WITSVID { string
    spiffe_id = 1; string wit_svid = 2; string wit_svid_key = 3; ... }."""
    call = client._channel.unary_stream(
        "/SpiffeWorkloadAPI/FetchWITSVID",
        request_serializer=lambda _: b"",
        response_deserializer=lambda raw: raw,
    )
    stream = call(None, timeout=20)
    first = next(iter(stream))
    stream.cancel()
    svids = [dict(fields(svid)) for number, svid in fields(first) if number == 1]
    check(len(svids) >= 1, "FetchWITSVID returned a WIT-SVID")
    svid = svids[0]
    return svid[1].decode(), svid[2].decode(), json.loads(svid[3])


def mint_wpt(wit, key_jwk, audience):
    alg = key_jwk["alg"]
    key = jwt.PyJWK.from_dict(key_jwk, algorithm=alg).key
    claims = {
        "aud": audience,
        "exp": int(time.time()) + 60,
        "jti": b64url(secrets.token_bytes(16)),
        "wth": b64url(hashlib.sha256(wit.encode("ascii")).digest()),
    }
    return jwt.encode(claims, key, algorithm=alg, headers={"typ": "wpt+jwt"})


def main():
    endpoint, url, audience = sys.argv[1:4]
    client = WorkloadApiClient(endpoint, default_timeout=20)
    spiffe_id, wit, key_jwk = fetch_wit_svid(client)
    check(spiffe_id.startswith("spiffe://"), f"the WIT-SVID is for {spiffe_id}")
    wpt = mint_wpt(wit, key_jwk, audience)
    header = jwt.get_unverified_header(wpt)
    check(header.get("typ") == "wpt+jwt" and "ath" not in jwt.decode(wpt, options={"verify_signature": False}), "PyJWT minted a wpt+jwt without ath")
    headers = {"Workload-Identity-Token": wit, "Authorization": f"WPT {wpt}"}

    with httpx.Client(timeout=20) as http:
        first = http.get(url, headers=headers)
        check(first.status_code == 200, f"the service accepts the Authorization form ({first.status_code} {first.text})")
        check(first.json().get("caller") == spiffe_id, f"the service sees the caller {first.json().get('caller')}")
        check(first.json().get("proof") == "wpt", "the proof was a WPT")

        again = http.get(url, headers=headers)
        check(again.status_code == 401, f"the identical request is refused with 401 ({again.status_code})")
        check(again.headers.get("www-authenticate") == "WPT", f"the challenge is WWW-Authenticate: WPT ({again.headers.get('www-authenticate')!r})")
        check(again.headers.get("content-type") == "application/problem+json", "the refusal is an RFC 9457 problem")
        problem = again.json()
        check(problem.get("check") == "wpt.jti", f"the problem names the replayed jti ({problem.get('check')})")
        check(wpt not in again.text and wit not in again.text, "the problem quotes neither token")
    client.close()
    print(f"verified {spiffe_id}")


if __name__ == "__main__":
    main()
