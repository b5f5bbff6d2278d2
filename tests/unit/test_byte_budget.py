"""ByteBudget: a semaphore weighed in bytes, for the batches between reader and writer."""

from __future__ import annotations

import asyncio

import pytest

from engine.aio import ByteBudget


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_items_that_fit_go_at_once_and_the_next_waits_for_a_release() -> None:
    budget = ByteBudget(100)
    await budget.acquire(60)
    await budget.acquire(40)
    third = asyncio.create_task(budget.acquire(10))
    await _settle()
    assert not third.done() and budget.held == 100
    budget.release(5)
    await _settle()
    assert not third.done()  # 95 + 10 > 100: still waiting
    budget.release(60)
    await _settle()
    assert third.done() and budget.held == 45
    assert budget.peak == 100


async def test_an_item_larger_than_the_budget_goes_alone() -> None:
    budget = ByteBudget(100)
    await budget.acquire(30)
    large = asyncio.create_task(budget.acquire(500))
    await _settle()
    assert not large.done()  # not beside another item
    budget.release(30)
    await _settle()
    assert large.done() and budget.held == 500  # alone: it waits, but never deadlocks
    after = asyncio.create_task(budget.acquire(1))
    await _settle()
    assert not after.done()
    budget.release(500)
    await _settle()
    assert after.done() and budget.peak == 500


def test_a_budget_needs_a_byte() -> None:
    with pytest.raises(ValueError, match="at least 1 byte"):
        ByteBudget(0)
