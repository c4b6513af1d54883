"""dnas: differentiable neural architecture search (DARTS and its family) as composable parts."""
from .genotype import Genotype, GenotypeError
from .methods import Method, builtin_methods, get_method
from .search import SearchConfig, SearchResult, search
from .train import TrainConfig, TrainResult, train
from .zoo import load_genotype, published

__version__ = "0.1.0"
__all__ = ["Genotype", "GenotypeError", "Method", "SearchConfig", "SearchResult", "TrainConfig", "TrainResult",
           "builtin_methods", "get_method", "load_genotype", "published", "search", "train"]
