"""Verifies a Switchboard client assertion with PyJWT against a JWK set and checks every claim
rule Epic publishes (shared/docs/epic-facts.md §1). Prints "ok" or the broken rule; exit 1 on failure.

usage: verify_assertion.py JWKS_JSON ASSERTION CLIENT_ID TOKEN_URL
"""
import json
import sys
import time

import jwt


def main() -> None:
    jwks_text, assertion, client_id, token_url = sys.argv[1:5]
    header = jwt.get_unverified_header(assertion)
    problems = []
    if header.get("alg") not in ("RS256", "RS384", "RS512", "ES256", "ES384"):
        problems.append(f"alg {header.get('alg')} is not accepted by Epic")
    if not header.get("kid"):
        problems.append("no kid in the header")
    jwks = jwt.PyJWKSet.from_dict(json.loads(jwks_text))
    matching = [k for k in jwks.keys if k.key_id == header.get("kid")]
    if not matching:
        problems.append("the kid is not in the JWK set")
        print("; ".join(problems))
        sys.exit(1)
    claims = jwt.decode(assertion, matching[0].key, algorithms=[header["alg"]], audience=token_url, issuer=client_id,
                        options={"require": ["exp", "iss", "sub", "aud", "jti"]})
    now = time.time()
    if claims["sub"] != client_id:
        problems.append("sub is not the client id")
    if not isinstance(claims["jti"], str) or not claims["jti"] or len(claims["jti"]) > 151:
        problems.append("jti must be a string of at most 151 characters")
    if claims["exp"] > now + 300:
        problems.append("exp is more than 5 minutes ahead")
    for c in ("iat", "nbf"):
        if c in claims and (claims[c] > now + 5 or claims["exp"] - claims[c] > 300):
            problems.append(f"{c} is in the future or more than 300 s before exp")
    if problems:
        print("; ".join(problems))
        sys.exit(1)
    print("ok")


if __name__ == "__main__":
    main()
