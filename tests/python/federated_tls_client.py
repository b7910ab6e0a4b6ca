"""Connects with Python's ssl module as a workload of another trust domain.

usage: federated_tls_client.py HOST PORT SERVER_NAME CERT KEY CAFILE
CERT and KEY are the client's X509-SVID chain and key (PEM); CAFILE holds
the server's trust domain bundle, as federation delivered it. Prints the
server certificate's URI SAN (its SPIFFE ID) and the first line the server
sends; exits non-zero when the handshake fails.
"""
import socket
import ssl
import sys


def main() -> int:
    host, port, server_name, cert, key, cafile = sys.argv[1:7]
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    context.load_cert_chain(cert, key)
    try:
        with socket.create_connection((host, int(port)), timeout=20) as raw:
            with context.wrap_socket(raw, server_hostname=server_name) as tls:
                peer = tls.getpeercert()
                uris = [v for (k, v) in peer.get("subjectAltName", ()) if k == "URI"]
                line = tls.recv(256).decode().strip()
    except (ssl.SSLError, OSError) as error:
        print(f"refused: {error}", file=sys.stderr)
        return 1
    print(uris[0] if uris else "")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
