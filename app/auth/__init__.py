"""Authentication and authorization: every credential resolves to one ``Principal``."""
