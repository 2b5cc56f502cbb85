"""LLM Compression Atlas: the paper catalog, its search index, site and exports."""

__version__ = "0.1.0"
