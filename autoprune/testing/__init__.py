"""Conformance suites a third party runs on its own parts (as ``optuna.testing`` does):
``check_agent`` for an agent, ``check_space`` for a search space on a model,
``check_cost_model`` for a cost model, ``check_executor`` for an executor. Each raises
``AssertionError`` naming the broken promise; autoprune's own tests run them over every
registered part. ``autoprune.testing.architectures.ARCHITECTURES`` is a zoo of foreign
architectures (HF transformers, plain attention, awkward CNNs, recurrent layers) to run a
space on."""

from __future__ import annotations

from autoprune.testing.suites import check_agent, check_cost_model, check_executor, check_space

__all__ = ["check_agent", "check_cost_model", "check_executor", "check_space"]
