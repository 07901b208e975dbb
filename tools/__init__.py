"""Command-line tools: data preparation, weight conversion, benchmarks."""
