"""Verifies an HS256 JWT with PyJWT (Jitsi's token authentication checks room tokens this way)
and prints its claims as JSON.

usage: verify_hs256.py SECRET AUDIENCE TOKEN
"""
import json
import sys

import jwt


def main() -> None:
    secret, audience, token = sys.argv[1:4]
    claims = jwt.decode(token, secret, algorithms=["HS256"], audience=audience,
                        options={"require": ["exp", "iss", "aud", "room"]})
    print(json.dumps(claims))


if __name__ == "__main__":
    main()
