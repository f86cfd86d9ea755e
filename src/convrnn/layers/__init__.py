"""convrnn layers: pure nn.Modules, batch first, each able to say its output shape without running.

The MDLSTM layers live in ``convrnn.layers.mdlstm`` and are imported from there.
"""
from convrnn.layers.base import Shaped
from convrnn.layers.conv import BatchNorm, Conv, Dense, Dropout, Embedding, Flatten, OneHot, Pool, make_activation
from convrnn.layers.heads import Classify, Project, Regress, pool_steps
from convrnn.layers.recurrent import Recurrent
from convrnn.layers.slicing import Blocks, Columns
from convrnn.layers.time_distributed import TimeDistributed

__all__ = [
    "Shaped", "TimeDistributed", "Blocks", "Columns", "Conv", "Pool", "BatchNorm", "Dropout", "Flatten", "Dense",
    "Embedding", "OneHot", "make_activation", "Recurrent", "Classify", "Regress", "Project", "pool_steps",
]
