"""The OAuth2 authorization server (SPEC §4.4) on Authlib's protocol core.

Authlib is synchronous. Each endpoint reads its HTTP request itself (``requests.FormRequest``),
then runs Authlib inside ``AsyncSession.run_sync`` (``server.run_oauth``): the SQLAlchemy
``Session`` it hands over drives the same async driver through greenlets, so nothing blocks the
event loop, and the whole exchange is one transaction, committed even when Authlib answers an
error (a replayed code or refresh token must stay revoked).

Modules: ``records`` (the rows as Authlib's mixins), ``tokens`` (issuing, hashing and revoking),
``grants`` (code + mandatory S256 PKCE, rotating refresh, client credentials), ``endpoints``
(RFC 7009 revocation, RFC 7662 introspection), ``server`` (the ``AuthorizationServer``),
``metadata`` (RFC 8414). The access token's resolver is ``app.auth.resolvers.oauth``.
"""
