//! SMART Backend Services: keys (PEM, JWK/JWKS), client assertion, token cache, discovery.
