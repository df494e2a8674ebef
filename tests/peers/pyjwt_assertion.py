"""Signs an Epic backend-services client assertion with PyJWT (an implementation Switchboard did
not write) and prints {"assertion": ..., "jwk": ...} as JSON.

usage: pyjwt_assertion.py ALG CLIENT_ID TOKEN_URL KID
"""
import json
import sys
import time
import uuid

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm


def main() -> None:
    alg, client_id, token_url, kid = sys.argv[1:5]
    if alg.startswith("RS"):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    else:
        curve = ec.SECP256R1() if alg == "ES256" else ec.SECP384R1()
        key = ec.generate_private_key(curve)
        jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    jwk["kid"] = kid
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": token_url, "jti": str(uuid.uuid4()), "exp": now + 240, "iat": now, "nbf": now}
    assertion = jwt.encode(claims, key, algorithm=alg, headers={"kid": kid, "typ": "JWT"})
    print(json.dumps({"assertion": assertion, "jwk": jwk}))


if __name__ == "__main__":
    main()
