"""dnas: differentiable neural architecture search (DARTS and its family) as composable parts."""
from .genotype import Genotype, GenotypeError
from .methods import Method, builtin_methods, get_method
from .export import export_run
from .search import SearchConfig, SearchResult, search
from .spaces.darts_network import create_network
from .train import TrainConfig, TrainResult, evaluate_run, load_run, train
from .zoo import load_genotype, published

__version__ = "0.1.0"
__all__ = ["Genotype", "GenotypeError", "Method", "SearchConfig", "SearchResult", "TrainConfig", "TrainResult",
           "builtin_methods", "create_network", "evaluate_run", "export_run", "get_method", "load_genotype",
           "load_run", "published", "search", "train"]
