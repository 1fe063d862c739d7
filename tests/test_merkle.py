"""RFC 9162 Merkle trees: known answers from Certificate Transparency's test data, and
every proof of every small tree checked both ways.

The leaves, roots and proofs below are the published CT test vectors
(certificate-transparency's merkle tree tests); the code is ours.
"""

from __future__ import annotations

import hashlib

import pytest

from liaison.keys.merkle import (
    EMPTY_ROOT,
    MemoryTree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)

LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
PATHS = {
    (0, 1): [],
    (0, 8): [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    (5, 8): [
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
}
CONSISTENCY = {
    (1, 1): [],
    (1, 8): [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    (6, 8): [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
    (2, 5): [
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ],
}
WRONG = hashlib.sha256(b"not a root of these trees").digest()
TREE = MemoryTree([leaf_hash(leaf) for leaf in LEAVES])


def test_the_empty_tree_is_the_hash_of_nothing() -> None:
    assert EMPTY_ROOT.hex() == hashlib.sha256(b"").hexdigest()
    assert root(TREE, 0) == EMPTY_ROOT


@pytest.mark.parametrize("size", range(1, 9))
def test_roots_of_the_ct_vectors(size: int) -> None:
    assert root(TREE, size).hex() == ROOTS[size - 1]


@pytest.mark.parametrize(("index", "size"), list(PATHS))
def test_inclusion_proofs_of_the_ct_vectors(index: int, size: int) -> None:
    proof = inclusion_proof(TREE, index, size)
    assert [p.hex() for p in proof] == PATHS[(index, size)]
    assert verify_inclusion(leaf_hash(LEAVES[index]), index, size, proof, root(TREE, size))


@pytest.mark.parametrize(("old", "new"), list(CONSISTENCY))
def test_consistency_proofs_of_the_ct_vectors(old: int, new: int) -> None:
    proof = consistency_proof(TREE, old, new)
    assert [p.hex() for p in proof] == CONSISTENCY[(old, new)]
    assert verify_consistency(old, new, root(TREE, old), root(TREE, new), proof)


def _mth(leaves: list[bytes]) -> bytes:
    """RFC 9162's recursive definition, written out plainly, to compare with."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return node_hash(_mth(leaves[:k]), _mth(leaves[k:]))


def test_every_proof_of_every_tree_up_to_33_leaves() -> None:
    leaves = [leaf_hash(number.to_bytes(2, "big")) for number in range(33)]
    tree = MemoryTree(leaves)
    for size in range(1, 34):
        expected = _mth(leaves[:size])
        assert root(tree, size) == expected
        for index in range(size):
            proof = inclusion_proof(tree, index, size)
            assert verify_inclusion(leaves[index], index, size, proof, expected)
            assert not verify_inclusion(leaves[index], index, size, proof, WRONG)
            assert not verify_inclusion(leaf_hash(b"other"), index, size, proof, expected)
            if proof:
                bent = [proof[0][:-1] + bytes([proof[0][-1] ^ 1]), *proof[1:]]
                assert not verify_inclusion(leaves[index], index, size, bent, expected)
            assert not verify_inclusion(leaves[index], index, size, [*proof, expected], expected)
        for old in range(0, size + 1):
            proof = consistency_proof(tree, old, size)
            old_root = _mth(leaves[:old])
            assert verify_consistency(old, size, old_root, expected, proof)
            if 0 < old < size:
                other = _mth([*leaves[: old - 1], leaf_hash(b"rewritten")])
                assert not verify_consistency(old, size, other, expected, proof)
                assert not verify_consistency(old, size, old_root, WRONG, proof)
                assert not verify_consistency(old, size, old_root, expected, proof[:-1])


def test_appending_reports_each_completed_subtree_once() -> None:
    tree = MemoryTree()
    completed = [entry for n in range(8) for entry in tree.append(leaf_hash(bytes([n])))]
    levels = [level for level, _index, _hash in completed]
    assert levels.count(0) == 8
    assert levels.count(1) == 4
    assert levels.count(2) == 2
    assert levels.count(3) == 1


def test_proofs_refuse_impossible_positions() -> None:
    with pytest.raises(ValueError, match="not in the tree"):
        inclusion_proof(TREE, 8, 8)
    with pytest.raises(ValueError, match="larger"):
        consistency_proof(TREE, 5, 4)
    assert not verify_inclusion(leaf_hash(LEAVES[0]), 3, 3, [], root(TREE, 3))
    assert not verify_consistency(4, 3, root(TREE, 4), root(TREE, 3), [])
