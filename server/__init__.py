"""The agency node: peer exchange, local API, delivery, storage."""
