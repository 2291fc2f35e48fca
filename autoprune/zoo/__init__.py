"""The zoo: our own models (CIFAR-style ResNet-20/56, VGG, MobileNet-V1/V2; torchvision is
not used), the data sources, baseline training and caching, and the built-in evaluator with
the one accuracy loop (``evaluate_accuracy``)."""

from __future__ import annotations

from autoprune.zoo.data import DataSplits, available_datasets, load_data
from autoprune.zoo.evaluate import ClassificationEvaluator, adaptive_bn, evaluate_accuracy
from autoprune.zoo.models import available_models, build_model, build_model_from_spec
from autoprune.zoo.train import default_cache_dir, load_or_train_baseline, train_model

__all__ = ["ClassificationEvaluator", "DataSplits", "adaptive_bn", "available_datasets",
           "available_models", "build_model", "build_model_from_spec", "default_cache_dir",
           "evaluate_accuracy", "load_data", "load_or_train_baseline", "train_model"]
