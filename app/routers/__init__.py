"""HTTP only: parse, call a service, map results to responses."""
