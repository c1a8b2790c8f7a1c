"""Deployment recipes beyond one machine; nothing here is imported by the local service."""
