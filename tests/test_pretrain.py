"""Pretraining without the continual labels: the pretrain split's classes are disjoint from the
continual ones; MLM masks only real caption tokens; ITM negatives never pair a caption with an
image of the same shape groups."""

from __future__ import annotations

import torch

from cmml.data import embedded
from cmml.models.pretrain import IGNORE, itm_pairs, mask_tokens


def test_pretrain_split_classes_are_disjoint_from_the_continual_ones() -> None:
    for n in (4, 20, embedded.MAX_CLASSES):
        pre, cont = embedded.split_class_ids("pretrain", n), embedded.split_class_ids("train", n)
        assert pre and not set(pre) & set(cont) and set(pre) | set(cont) == set(range(embedded.ALL_CLASSES))
        assert {c // 4 for c in pre}.isdisjoint({c // 4 for c in cont})  # not even a shape group is shared
    s = embedded.generate_split("pretrain", seed=0, num_classes=20, per_class=2, image_size=16)
    assert min(c for labs in s.labels for c in labs) >= 20


def test_mask_tokens_masks_only_real_caption_tokens() -> None:
    special = torch.tensor([0, 1, 2, 3, 4])  # [PAD] [UNK] [CLS] [SEP] [MASK]
    ids = torch.tensor([[2, 10, 11, 12, 3, 0, 0], [2, 13, 3, 0, 0, 0, 0]]).repeat(200, 1)
    mask = (ids != 0).long()
    masked, labels = mask_tokens(ids, mask, special_ids=special, mask_id=4, vocab_size=20, prob=0.15,
                                 generator=torch.Generator().manual_seed(0))
    chosen = labels != IGNORE
    assert not chosen[torch.isin(ids, special)].any()  # [CLS], [SEP], [PAD] never chosen
    assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(masked[~chosen], ids[~chosen])
    real = mask.bool() & ~torch.isin(ids, special)
    rate = chosen.sum() / real.sum()
    assert 0.12 < rate < 0.18
    to_mask = (masked[chosen] == 4).float().mean()
    assert 0.7 < to_mask < 0.9 and not torch.isin(masked[chosen & (masked != 4) & (masked != ids)], special).any()
    again, _ = mask_tokens(ids, mask, special_ids=special, mask_id=4, vocab_size=20, prob=0.15,
                           generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, masked)  # seeded


def test_itm_negatives_never_show_the_captions_shapes() -> None:
    g = torch.Generator().manual_seed(0)
    groups = torch.zeros(64, 8, dtype=torch.bool)
    groups[torch.arange(64), torch.randint(0, 3, (64,), generator=g)] = True
    partner = itm_pairs(groups, torch.Generator().manual_seed(1))
    assert (partner >= 0).all() and (partner != torch.arange(64)).all()
    assert all(not torch.equal(groups[i], groups[int(p)]) for i, p in enumerate(partner))
    same = torch.zeros(4, 8, dtype=torch.bool)
    same[:, 2] = True
    assert (itm_pairs(same, torch.Generator().manual_seed(1)) == -1).all()  # no valid negative in the batch
