"""The domain: conversation turns, versions, participants, administration. Knows nothing of HTTP."""
