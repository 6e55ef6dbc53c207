"""cl_platform: continual learning of unified multimodal generative models on Ray.

Subpackages (one concern each):

- ``mode``: the MoDE method as a PEFT tuner (config, fused layer, routing, registration)
- ``methods``: the continual-learning methods the platform compares, behind one interface
- ``models``: backbones, the tiny model factory, modality specs and image-token handling
- ``data``: the task format, validation and data pipelines
- ``suites``: plug-ins that resolve a run's inputs: built-in benchmarks, a user's store, the MoDE-official importer
- ``train``: training loops, knowledge distillation and the teacher cache
- ``eval``: accuracy, generation scores, continual-learning metrics and reports
- ``store``: the fsspec-based artifact store (file:// and s3://)
"""

__version__ = "0.1.0"
