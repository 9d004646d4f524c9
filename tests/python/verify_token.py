"""Verifies a sealroom token as any relying party would: keys from the broker's JWKS endpoint (PyJWKClient),
ES256 signature, issuer, and the registered claims exp/iat/iss required. Prints the claims as JSON."""
import json
import sys

import jwt


def main() -> int:
    jwks_url, issuer, token = sys.argv[1], sys.argv[2], sys.argv[3]
    signing_key = jwt.PyJWKClient(jwks_url).get_signing_key_from_jwt(token)
    claims = jwt.decode(
        token,
        signing_key.key,
        algorithms=["ES256"],
        issuer=issuer,
        options={"require": ["exp", "iat", "iss"]},
    )
    print(json.dumps({"kid": signing_key.key_id, "claims": claims}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
