"""Models that were never Keras models -> the intermediate: TF1 checkpoints (tflearn's included,
read from the meta graph alone), frozen GraphDef `.pb` files and low-level SavedModels.

The pipeline, top to bottom:
  load (checkpoint / .pb / SavedModel) -> resolve training structure to inference
  -> find inputs and outputs -> freeze variables and prune -> check the result still computes
  what the original graph computed -> map ops onto the intermediate vocabulary -> reference run.

Modules, in that order: load.py (reading sources), inference.py (training structure), io.py
(inputs and outputs), freeze.py (`load_graph`: all of the above, frozen, pruned and checked),
mapper.py and ops.py (the walk over the graph and the op -> vocabulary table), model.py
(`graph_to_intermediate`, `source_to_intermediate`); nodes.py and session.py serve them all.

Graph ops are mapped onto the same vocabulary as Keras layers, so the import side's handlers
convert them; nothing here knows about Caffe.
"""
from .freeze import load_graph
from .load import is_graph_source, model_stem
from .model import graph_to_intermediate, source_to_intermediate
from .session import run_graph_def

# run_graph_def too: test_graph_export.py runs frozen graphs with it.
__all__ = ["graph_to_intermediate", "is_graph_source", "load_graph", "model_stem", "source_to_intermediate",
           "run_graph_def"]
