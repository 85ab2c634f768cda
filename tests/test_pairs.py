import numpy as np
import pandas as pd
import pytest
import torch

from hcibench.train.pairs import cross_batch_partners


def _meta(n=400, compounds=12, batches=3, plates_per_batch=2, seed=0):
    rng = np.random.default_rng(seed)
    batch = rng.integers(0, batches, n)
    return pd.DataFrame(
        {
            "compound": [f"c{i}" for i in rng.integers(0, compounds, n)],
            "batch": [f"b{b}" for b in batch],
            "plate": [f"b{b}p{p}" for b, p in zip(batch, rng.integers(0, plates_per_batch, n))],
        }
    )


@pytest.mark.parametrize("key", ["batch", "plate"])
def test_every_pair_shares_a_compound_and_differs_in_the_key(key):
    meta = _meta()
    partners, stats = cross_batch_partners(meta, key=key, generator=np.random.default_rng(1))
    assert partners.shape == (len(meta),)
    assert (meta["compound"].to_numpy()[partners] == meta["compound"].to_numpy()).all()
    assert (meta[key].to_numpy()[partners] != meta[key].to_numpy()).all()
    assert stats == {
        "key": key,
        "pairs": len(meta),
        "cross": len(meta),
        "fallback_plate": 0,
        "fallback_self": 0,
        "missing_compound": 0,
        "fallback_compounds": 0,
    }


def test_partners_are_drawn_uniformly_among_the_candidates():
    meta = pd.DataFrame({"compound": ["a"] * 4, "batch": ["x", "y", "y", "z"], "plate": ["1", "2", "3", "4"]})
    rng = np.random.default_rng(0)
    counts = np.zeros((4, 4))
    for _ in range(600):
        partners, _ = cross_batch_partners(meta, generator=rng)
        counts[np.arange(4), partners] += 1
    # row 0 (batch x) chooses among rows 1, 2, 3; rows 1 and 2 (batch y) among rows 0 and 3
    assert counts[0, 0] == 0 and (counts[0, 1:] > 150).all()
    assert counts[1, 1] == counts[1, 2] == 0 and (counts[1, [0, 3]] > 250).all()
    assert counts[3, 3] == 0 and (counts[3, :3] > 150).all()


def test_single_batch_compound_falls_back_to_another_plate_then_to_itself():
    meta = pd.DataFrame(
        {
            "compound": ["a", "a", "a", "b", "b", "c", "c", None],
            "batch": ["1", "2", "2", "1", "1", "1", "1", "2"],
            "plate": ["p", "q", "r", "p", "s", "p", "p", "q"],
        }
    )
    partners, stats = cross_batch_partners(meta, key="batch", generator=0)
    assert partners[0] in (1, 2) and partners[1] == 0 and partners[2] == 0
    assert partners[3] == 4 and partners[4] == 3  # compound b: one batch, two plates
    assert partners[5] == 5 and partners[6] == 6  # compound c: one plate
    assert partners[7] == 7  # no compound
    assert stats == {
        "key": "batch",
        "pairs": 8,
        "cross": 3,
        "fallback_plate": 2,
        "fallback_self": 3,
        "missing_compound": 1,
        "fallback_compounds": 2,
    }


def test_plate_key_has_no_plate_fallback():
    meta = pd.DataFrame({"compound": ["a", "a"], "batch": ["1", "1"], "plate": ["p", "p"]})
    partners, stats = cross_batch_partners(meta, key="plate", generator=0)
    assert partners.tolist() == [0, 1]
    assert stats["fallback_plate"] == 0 and stats["fallback_self"] == 2


def test_accepts_a_torch_generator_and_is_reproducible():
    meta = _meta()
    a, _ = cross_batch_partners(meta, generator=torch.Generator().manual_seed(5))
    b, _ = cross_batch_partners(meta, generator=torch.Generator().manual_seed(5))
    c, _ = cross_batch_partners(meta, generator=torch.Generator().manual_seed(6))
    assert (a == b).all() and (a != c).any()


def test_missing_column_is_reported():
    with pytest.raises(ValueError, match="batch"):
        cross_batch_partners(pd.DataFrame({"compound": ["a"], "plate": ["p"]}))


def test_a_large_table_pairs_every_row_and_counts_its_single_batch_compound():
    # Its speed (how the time grows with the rows) is measured in benchmarks/bench_pairs.py.
    meta = _meta(n=100_000, compounds=300, batches=5, plates_per_batch=8)
    meta.loc[meta["compound"] == "c7", "batch"] = "b0"  # one single-batch compound
    partners, stats = cross_batch_partners(meta, generator=0)
    same = meta["compound"].to_numpy()[partners] == meta["compound"].to_numpy()
    assert same.all()
    assert stats["fallback_plate"] == int((meta["compound"] == "c7").sum())
    assert stats["fallback_compounds"] == 1


def test_same_batch_control_pairs_within_the_batch_and_never_across():
    meta = _meta()
    partners, stats = cross_batch_partners(meta, key="same-batch", generator=np.random.default_rng(2))
    compound, batch = meta["compound"].to_numpy(), meta["batch"].to_numpy()
    paired = partners != np.arange(len(meta))
    assert (compound[partners] == compound).all() and (batch[partners] == batch).all()
    # every (compound, batch) group with two or more images pairs all of its images
    sizes = meta.groupby(["compound", "batch"])["plate"].transform("size").to_numpy()
    assert (paired == (sizes > 1)).all()
    assert stats["key"] == "same-batch" and stats["cross"] == int(paired.sum())
    assert stats["fallback_plate"] == 0 and stats["fallback_self"] == int((~paired).sum())


def test_unknown_pair_key_is_refused():
    with pytest.raises(ValueError, match="same-batch"):
        cross_batch_partners(_meta(), key="well")
