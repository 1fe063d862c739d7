"""Liaison Exchange: signed, encrypted case notices between liaison offices."""
