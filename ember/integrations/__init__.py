"""Ember past one machine: integrations with distributed engines (``ember.integrations.ray``).

Each integration is an optional extra (``pip install ember[ray]``); importing this package
imports none of them.
"""
