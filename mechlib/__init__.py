"""mechlib: the tested library behind the arithmetic-in-transformers research book."""

__version__ = "0.1.0"

import warnings

# Libraries import tqdm.auto; in a notebook without ipywidgets that warns on every chapter.
warnings.filterwarnings("ignore", message="IProgress not found")
