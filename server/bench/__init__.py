"""``liaison bench``: how fast a pair of nodes exchanges notices, against two ceilings.

A node's throughput means little alone; this package also measures what bounds it:

- ``echo`` (``grpc_mtls_echo``), the transport ceiling: a bare gRPC unary echo over
  mutual TLS between two processes, with the peer port's kind of certificates and
  listener settings, and no work per call. No node moves more notices per second
  over one connection than this moves payloads of the same size.
- ``floor`` (``crypto_floor``), the cryptographic ceiling: the signing, sealing,
  checking, opening and receipt work one notice costs the two nodes together, in
  one process with no I/O. No machine exchanges notices faster than its cores do
  only this work.

The node harness that runs real nodes beside these baselines is ``harness``.
"""
