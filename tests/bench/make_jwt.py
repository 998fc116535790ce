"""Writes a local JWK set for an RSA key and prints an RS256 token valid for a day.

    python3 tests/bench/make_jwt.py KEY.pem JWKS.json

The key is made beforehand with `openssl genrsa -out KEY.pem 2048`; the token's issuer,
audience and roles are the ones the benchmarks' `auth/validator` expects.
"""
import base64, json, subprocess, sys, time

key, jwk_path = sys.argv[1], sys.argv[2]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
out = subprocess.run(["openssl", "rsa", "-in", key, "-noout", "-modulus"],
                     check=True, capture_output=True, text=True).stdout
n = bytes.fromhex(out.strip().split("=", 1)[1])
with open(jwk_path, "w") as f:
    json.dump({"keys": [{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": "bench",
                         "n": b64(n), "e": "AQAB"}]}, f)
now = int(time.time())
header = {"alg": "RS256", "typ": "JWT", "kid": "bench"}
claims = {"iss": "https://auth.bench.local", "aud": "weir-bench", "sub": "user-48213",
          "roles": ["user"], "iat": now, "exp": now + 86400}
signing_input = (b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())).encode()
sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key],
                     input=signing_input, check=True, capture_output=True).stdout
print(signing_input.decode() + "." + b64(sig))
