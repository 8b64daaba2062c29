"""Outbound senders, one module per platform (SPEC §6), and (next) the delivery worker."""
