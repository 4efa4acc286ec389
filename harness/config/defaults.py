"""The defaults of the command line's flags that the floors below read too (the plan, the pre-flight memory check,
the search): here, below all of them and free of heavy imports, so that the command line's parser (harness/flags.py)
states them without importing torch."""

DEFAULT_GPU_MEMORY_GB = 80.0  # an 80 GB card (A100 / H100), the size the papers' ImageNet runs name
DEFAULT_GPU_TFLOPS = 25.0
DEFAULT_TRIALS = 20  # per searched method: the budget issue 14 asks for, the same for every method
