"""Quiet settings for a clean page, shared by the notebook helper and by worker processes
(whose output a Jupyter kernel forwards into the cell that started them)."""
from __future__ import annotations

import os
import warnings


def quiet() -> None:
    """One torch thread (fastest on a busy small machine unless ``MECHLIB_THREADS`` says
    otherwise), and no progress bars or library warnings."""
    import torch

    torch.set_num_threads(int(os.environ.get("MECHLIB_THREADS", "1")))
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(transformers|peft|torch|sae_lens|transformer_lens)")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()  # its own bars ("Writing model shards" in save_pretrained) ignore TQDM_DISABLE set late
    except ImportError:
        pass
    try:
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()
    except ImportError:
        pass
