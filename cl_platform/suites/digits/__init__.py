"""The built-in digits benchmark (scikit-learn's 8x8 handwritten digits, offline).

- :mod:`.vocab`: the closed vocabulary, image/text tokenisers and prompt builders (``DIGITS_SPEC``)
- :mod:`.tasks`: the seeded image split, the five continual-learning tasks, the KD and probe
  streams, and the pre-training sets (``build_suite``, ``pretrain_examples``)
- ``python -m cl_platform.suites.digits --store URL``: writes the suite into a store

Importing this package is cheap: submodules are imported on use.
"""
