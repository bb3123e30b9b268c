"""The infrastructure half: one ComponentResource per concern plus pure builders.

Builders (``*_manifest``, ``*_values``, ``*_policy`` functions) are plain functions of the
spec so they are tested without an engine; components only wire them to resources.
"""
