"""Identity: strict SPIFFE IDs, SVID sources and per-trust-domain peer verification."""
