"""Webhook Router: verify, parse, dedupe and route GitHub ``workflow_job`` deliveries, and
append each to its scale set's durable stream (ASGI app, signatures, events, routing, store)."""
