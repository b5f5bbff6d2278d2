"""The one reorder buffer every sink uses: pure, no I/O."""

from __future__ import annotations

import random

import pytest

from engine.ordering import InOrder


def test_items_leave_in_id_order_whatever_order_they_arrive_in() -> None:
    ids = list(range(200))
    random.Random(3).shuffle(ids)
    order: InOrder[int] = InOrder()
    left = [item for i in ids for _, item in order.add(i, i * 10)]
    assert left == [i * 10 for i in range(200)]
    assert len(order) == 0 and order.next_id == 200


def test_an_item_waits_for_the_ones_before_it() -> None:
    order: InOrder[str] = InOrder()
    assert order.add(2, "c") == [] and order.add(1, "b") == []
    assert order.waiting() == [1, 2]
    assert order.add(0, "a") == [(0, "a"), (1, "b"), (2, "c")]


@pytest.mark.parametrize("again", [0, 3])
def test_an_id_given_twice_is_refused(again: int) -> None:
    order: InOrder[str] = InOrder()
    order.add(0, "a")
    order.add(3, "d")
    with pytest.raises(ValueError, match="already added"):
        order.add(again, "x")
