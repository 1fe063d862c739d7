"""Merkle tree hashing, inclusion and consistency proofs, exactly as RFC 9162 section 2.1.

The tree is never held whole. A ``HashSource`` answers the hash of any
*perfect* subtree (``2**level`` leaves starting at ``index * 2**level``); a log
stores those as leaves arrive, so a root or a proof for any tree size costs
O(log n) lookups, however large the log.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(entry: bytes) -> bytes:
    """``SHA-256(0x00 || entry)``."""
    return hashlib.sha256(LEAF_PREFIX + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


class HashSource(Protocol):
    def perfect(self, level: int, index: int) -> bytes:
        """The hash of the perfect subtree of ``2**level`` leaves from ``index * 2**level``."""
        ...


def _split(size: int) -> int:
    """The largest power of two smaller than ``size`` (``size`` >= 2)."""
    return 1 << ((size - 1).bit_length() - 1)


def subtree_hash(source: HashSource, start: int, end: int) -> bytes:
    """MTH(D[start:end]) for ``start < end``, from perfect subtrees.

    ``start`` must be a multiple of the largest power of two not above
    ``end - start`` (as every range RFC 9162's definitions use is).
    """
    size = end - start
    if size & (size - 1) == 0:
        level = size.bit_length() - 1
        return source.perfect(level, start >> level)
    k = _split(size)
    return node_hash(subtree_hash(source, start, start + k), subtree_hash(source, start + k, end))


def root(source: HashSource, size: int) -> bytes:
    """The root of the tree of the first ``size`` leaves."""
    return EMPTY_ROOT if size == 0 else subtree_hash(source, 0, size)


def inclusion_proof(source: HashSource, index: int, size: int) -> list[bytes]:
    """PATH(index, D[0:size]) (RFC 9162 2.1.3.1)."""
    if not 0 <= index < size:
        raise ValueError("the leaf is not in the tree")
    path: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            path.append(subtree_hash(source, start + k, end))
            end = start + k
        else:
            path.append(subtree_hash(source, start, start + k))
            start += k
    return path[::-1]


def consistency_proof(source: HashSource, old: int, new: int) -> list[bytes]:
    """PROOF(old, D[0:new]) (RFC 9162 2.1.4.1); empty when ``old`` is 0 or ``new``."""
    if not 0 <= old <= new:
        raise ValueError("the old tree is larger than the new one")
    if old in (0, new):
        return []
    return _subproof(source, old, 0, new, complete=True)


def _subproof(source: HashSource, m: int, start: int, end: int, *, complete: bool) -> list[bytes]:
    size = end - start
    if m == size:
        return [] if complete else [subtree_hash(source, start, end)]
    k = _split(size)
    if m <= k:
        return [
            *_subproof(source, m, start, start + k, complete=complete),
            subtree_hash(source, start + k, end),
        ]
    return [
        *_subproof(source, m - k, start + k, end, complete=False),
        subtree_hash(source, start, start + k),
    ]


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], expected_root: bytes
) -> bool:
    """True if ``proof`` shows the leaf hash ``leaf`` at ``index`` in the tree of ``size``
    leaves whose root is ``expected_root`` (RFC 9162 2.1.3.2)."""
    if not 0 <= index < size:
        return False
    fn, sn = index, size - 1
    result = leaf
    for sibling in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            result = node_hash(sibling, result)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            result = node_hash(result, sibling)
        fn >>= 1
        sn >>= 1
    return sn == 0 and result == expected_root


def verify_consistency(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """True if ``proof`` shows the tree of ``old`` leaves with root ``old_root`` is a
    prefix of the tree of ``new`` leaves with root ``new_root`` (RFC 9162 2.1.4.2)."""
    if not 0 <= old <= new:
        return False
    if old == new:
        return not proof and old_root == new_root
    if old == 0:
        return not proof
    if not proof:
        return False
    path = list(proof)
    if old & (old - 1) == 0:  # a power of two: the old root is the proof's first node
        path.insert(0, old_root)
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0


class MemoryTree:
    """A whole tree in memory, from its leaf hashes: for verifying a copy of a log."""

    def __init__(self, leaves: Sequence[bytes] = ()) -> None:
        self._levels: list[list[bytes]] = [[]]
        for leaf in leaves:
            self.append(leaf)

    @classmethod
    def of_leaves(cls, leaves: list[bytes]) -> MemoryTree:
        """The tree of ``leaves`` (leaf hashes), built a level at a time: for a large log
        several times faster than appending one by one."""
        tree = cls()
        tree._levels = [leaves]
        level = leaves
        while len(level) > 1:
            sha256, prefix = hashlib.sha256, NODE_PREFIX
            level = [
                sha256(prefix + level[i] + level[i + 1]).digest()
                for i in range(0, len(level) - 1, 2)
            ]
            tree._levels.append(level)
        return tree

    def level(self, level: int) -> list[bytes]:
        """Every perfect subtree hash of ``level``, by index."""
        return self._levels[level] if level < len(self._levels) else []

    @property
    def size(self) -> int:
        return len(self._levels[0])

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add a leaf hash; returns the perfect subtrees it completed, (level, index, hash)."""
        completed = [(0, self.size, leaf)]
        self._levels[0].append(leaf)
        level, index = 0, self.size - 1
        while index & 1:
            left, right = self._levels[level][index - 1], self._levels[level][index]
            level, index = level + 1, index >> 1
            if len(self._levels) == level:
                self._levels.append([])
            combined = node_hash(left, right)
            self._levels[level].append(combined)
            completed.append((level, index, combined))
        return completed

    def perfect(self, level: int, index: int) -> bytes:
        return self._levels[level][index]
